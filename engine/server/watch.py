"""Waiting for a job to change without polling: the long-poll `GET /v1/jobs/{id}?wait=` and the
event stream `GET /v1/jobs/{id}/events`.

The job store announces every change to a job (`JobStore.on_change`, called from whichever thread
made it: the runner's worker, a request's cancel, expiry). `JobWatch.notify` then wakes each
coroutine waiting on that job through its own event loop (`loop.call_soon_threadsafe`), so a waiting
client holds no thread, only a pending coroutine, and hears of a change at once.

When the server stops (SIGTERM, Ctrl-C) `JobWatch.close` wakes every waiting client: a long-poll is
answered with the job's status now, an event stream ends, so that no open request holds the stop up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

from engine.server.store import FINAL, JobRecord

MAX_WAIT_S = 60.0
KEEP_ALIVE_S = 15.0  # an event stream sends a comment this often, so a dropped client is noticed


class JobWatch:
    """Who waits on which job, and waking them when the store records a change to it."""

    def __init__(self):
        self._lock = threading.Lock()
        self._waiting: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}
        self.closed = False

    def close(self) -> None:
        """The server is stopping: wake every waiting client now, and let none wait from here on."""
        with self._lock:
            self.closed = True
            entries = [entry for waiting in self._waiting.values() for entry in waiting]
        self._wake(entries)

    def reopen(self) -> None:
        """The app serves again (a test client started anew on the same app)."""
        self.closed = False

    @contextlib.contextmanager
    def listening(self, job_id: str) -> Iterator[asyncio.Event]:
        """An event set after each change to the job, for as long as the block runs (on a running loop)."""
        entry = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._waiting.setdefault(job_id, set()).add(entry)
        try:
            yield entry[1]
        finally:
            with self._lock:
                waiting = self._waiting.get(job_id)
                if waiting is not None:
                    waiting.discard(entry)
                    if not waiting:
                        del self._waiting[job_id]

    def notify(self, job_id: str) -> None:
        with self._lock:
            entries = list(self._waiting.get(job_id, ()))
        self._wake(entries)

    @staticmethod
    def _wake(entries) -> None:
        for loop, event in entries:
            with contextlib.suppress(RuntimeError):  # that loop has closed: nobody left to wake
                loop.call_soon_threadsafe(event.set)

    def waiting(self, job_id: str) -> int:
        """How many requests are waiting on the job now."""
        with self._lock:
            return len(self._waiting.get(job_id, ()))


Read = Callable[[str], Awaitable[JobRecord | None]]


async def wait_for_change(watch: JobWatch, read: Read, job_id: str, wait: float | None,
                          since: int | None) -> JobRecord | None:
    """The job once it is final, or (with `since`) once its revision differs from `since`, or after
    `wait` seconds, whichever comes first; at once without `wait`. None when the job is (or becomes) gone."""
    if wait is None:
        return await read(job_id)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + min(wait, MAX_WAIT_S)
    with watch.listening(job_id) as changed:  # listening before reading: no change falls in between
        while True:
            changed.clear()
            job = await read(job_id)
            if job is None or job.state in FINAL or (since is not None and job.revision != since) or watch.closed:
                return job
            remaining = deadline - loop.time()
            if remaining <= 0:
                return job
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)


async def status_events(watch: JobWatch, read: Read, job_id: str,
                        render: Callable[[JobRecord], dict]) -> AsyncIterator[str]:
    """Server-sent events: the job's status now and after each change, ending once it is final or gone."""
    with watch.listening(job_id) as changed:
        sent = None
        while True:
            changed.clear()
            job = await read(job_id)
            if job is None:
                yield "event: gone\ndata: {}\n\n"
                return
            if job.revision != sent:
                sent = job.revision
                yield f"id: {job.revision}\nevent: status\ndata: {json.dumps(render(job))}\n\n"
            if job.state in FINAL or watch.closed:  # closed: the server is stopping
                return
            try:
                await asyncio.wait_for(changed.wait(), KEEP_ALIVE_S)
            except asyncio.TimeoutError:
                yield ": keep-alive\n\n"
