"""Runs queued jobs one at a time per device, with progress, cancel and result bookkeeping.

A runner has one worker thread: the engine keeps one for the compute jobs and another for model
downloads (kind "download"), both on the same job store, so a download never holds up a segmentation.
The queue is bounded: a full queue refuses new jobs (the API answers 429). Only jobs still waiting
hold a place in it: cancelling or deleting a queued job frees its place at once. Cancelling sets the
job's event, which the pipeline checks after every batch of crops and before each file it publishes,
so a running job stops within one batch. Deleting a job forgets it at once (the request never waits
for the job to stop); a running one is cancelled, and its folder is removed again when it has
stopped. A job's files appear in its folder only when complete, and the job turns `done` after its
last file.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections import deque
from typing import Callable

from engine.errors import Cancelled, FarSLIPError, OutputError
from engine.server.store import FULL_ERRNOS, JobStore, StorageUnavailable
from engine.server.wording import for_clients

log = logging.getLogger("farslip.api")
RETRY_S = 5.0  # how often a job's start or outcome the data folder could not take is written again

JobFn = Callable[[dict, "JobContext"], dict]  # (request, context) → summary


class QueueFull(Exception):
    pass


class JobContext:
    """What a running job sees: its folder, a progress callback and its cancel event."""

    def __init__(self, store: JobStore, job_id: str, cancel: threading.Event):
        self.store, self.job_id, self.cancel = store, job_id, cancel
        self.out_dir = store.job_dir(job_id) / "out"
        self._last = 0.0

    def progress(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self._last >= 0.25 or done >= total:
            self._last = now
            self.store.update(self.job_id, progress=round(done / max(total, 1), 4),
                              message=f"{done}/{total} crops")

    def say(self, message: str) -> None:
        """Set the job's message (progress unchanged): what it is doing before its first crop."""
        self.store.update(self.job_id, message=message)

    def bytes_progress(self, done: int, total: int | None, prefix: str = "", fraction: bool = True) -> None:
        """A download's progress: message "312/600 MB" (after `prefix`) and, with `fraction`, progress =
        bytes done / total; at most four changes a second."""
        now = time.monotonic()
        if now - self._last >= 0.25 or (total is not None and done >= total):
            self._last = now
            fields = {"message": prefix + (f"{megabytes(done, total)}/{megabytes(total, total)} MB" if total
                                           else f"{megabytes(done, done)} MB")}
            if total and fraction:
                fields["progress"] = round(min(done / total, 1.0), 4)
            self.store.update(self.job_id, **fields)


def megabytes(value: int | None, scale: int | None) -> str:
    """`value` bytes in MB (2**20), with a decimal or two when `scale` is small enough to need them."""
    mb, whole = (value or 0) / 2**20, (scale or 0) / 2**20
    return f"{mb:.0f}" if whole >= 10 else f"{mb:.1f}" if whole >= 1 else f"{mb:.2f}"


class JobRunner:
    def __init__(self, store: JobStore, handlers: dict[str, JobFn], max_queue: int, name: str = "farslip-jobs"):
        self.store = store
        self.handlers = handlers
        self.max_queue = max_queue
        self._waiting: deque[str] = deque()  # queued jobs, oldest first; guarded by _lock
        self._cancel: dict[str, threading.Event] = {}
        self._lock = threading.Condition()
        self.running: str | None = None
        self._unrecorded: str | None = None  # the job whose start the data folder last could not take
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._stop = threading.Event()
        self._thread.start()

    @property
    def queue_length(self) -> int:
        """Jobs waiting to start (not the running one; cancelled and deleted ones are not waiting). Read
        without the lock (a deque's length is read atomically): health, on the event loop, never waits."""
        return len(self._waiting)

    def submit(self, kind: str, request: dict) -> str:
        with self._lock:
            if len(self._waiting) >= self.max_queue:
                raise QueueFull()
            job = self.store.create(kind, request)
            self._cancel[job.id] = threading.Event()
            self._waiting.append(job.id)
            self._lock.notify()
        return job.id

    def _unqueue(self, job_id: str) -> None:
        """Free a job's place in the queue (it will never start)."""
        with self._lock:
            try:
                self._waiting.remove(job_id)
            except ValueError:  # started already, or not ours
                return
            self._cancel.pop(job_id, None)

    def cancel(self, job_id: str) -> bool:
        """Ask a job to stop; True when it was queued or running. Safe to call from any number of
        requests at once, and on a job that another request has just deleted."""
        if self.store.set_state_if(job_id, ("queued",), "cancelled", "cancelled before it started"):
            self._unqueue(job_id)
            return True
        event = self._cancel.get(job_id)
        job = self.store.get(job_id)
        if event is not None and job is not None and job.state == "running":
            event.set()
            return True
        return False

    def delete(self, job_id: str) -> bool:
        """Forget a job now, cancelling it when queued or running (its folder is removed again once it
        has stopped); True when it existed. `InUse` (nothing done) while a queued or running job uses
        the job's files."""
        self.store.check_unused(job_id)
        self.cancel(job_id)
        event = self._cancel.get(job_id)
        if event is not None:
            event.set()
        existed = self.store.delete(job_id)
        self._unqueue(job_id)
        return existed

    def _work(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                if not self._lock.wait_for(lambda: self._waiting or self._stop.is_set(), timeout=0.5) \
                        or not self._waiting:
                    continue
                job_id = self._waiting.popleft()
            waits = False  # (put back in line: it keeps its cancel event)
            try:
                waits = not self._start(job_id)
                if not waits:
                    self._run(job_id)
            except Exception:  # noqa: BLE001 - an outcome the store cannot take, for no reason retrying mends
                log.exception("job %s: its outcome could not be recorded", job_id)
            finally:
                if not waits:
                    self._cancel.pop(job_id, None)
                    self.running = None
                    if self.store.get(job_id) is None:  # deleted while it ran: remove what it wrote since
                        shutil.rmtree(self.store.job_dir(job_id), ignore_errors=True)

    def _start(self, job_id: str) -> bool:
        """Record that a queued job starts: True when it should run now. A start the data folder cannot
        take (a full disk) puts the job back first in line, tried again every RETRY_S."""
        try:
            self.store.set_state_if(job_id, ("queued",), "running", "starting")
            return True  # (a job cancelled or deleted meanwhile is not running: `_run` lets it be)
        except StorageUnavailable as exc:
            if self._unrecorded != job_id:  # (said once per job, not every few seconds)
                log.warning("job %s cannot start yet: %s", job_id, exc)
                self._unrecorded = job_id
            with self._lock:
                self._waiting.appendleft(job_id)
            self._stop.wait(RETRY_S)
            return False

    def _run(self, job_id: str) -> None:
        job = self.store.get(job_id)
        if job is None or job.state != "running":
            return
        self.running = job_id
        cancel = self._cancel.get(job_id) or threading.Event()
        context = JobContext(self.store, job_id, cancel)
        started = time.perf_counter()
        try:
            summary = self.handlers[job.kind](job.request, context)
        except Exception as exc:  # every outcome is recorded; the server stays up
            if isinstance(exc, Cancelled) or cancel.is_set():
                self._record(job_id, state="cancelled", message="cancelled")
            elif isinstance(exc, OutputError):  # the engine's disk: nothing a client can choose otherwise
                full = isinstance(exc.__cause__, OSError) and exc.__cause__.errno in FULL_ERRNOS
                log.warning("job %s: its results could not be written: %s", job_id, exc.reason,
                            exc_info=None if full else exc.__cause__)  # (a full disk needs no traceback)
                self._record(job_id, state="failed", message=f"the engine could not write the results into its "
                                                             f"data folder {self.store.data_dir}: {exc.reason}; "
                                                             f"free space there (or ask whoever runs the engine) "
                                                             f"and resubmit")
            elif isinstance(exc, FarSLIPError):
                self._record(job_id, state="failed", message=for_clients(str(exc)))
            elif isinstance(exc, OSError) and exc.errno in FULL_ERRNOS:
                self._record(job_id, state="failed", message=f"no space left for the results in "
                                                             f"{self.store.data_dir}: free space and resubmit")
            else:
                log.exception("job %s failed", job_id)
                self._record(job_id, state="failed", message=f"internal error: {type(exc).__name__}: {exc}")
            ended = self.store.get(job_id)
            log.info("job %s %s after %.2f s", job_id, ended.state if ended else "deleted", time.perf_counter() - started)
            return
        files = sorted(p.name for p in context.out_dir.iterdir()) if context.out_dir.exists() else []
        if isinstance(summary, dict) and summary.get("notes"):  # for the client: its fields, not CLI flags
            summary = {**summary, "notes": [for_clients(note) for note in summary["notes"]]}
        self._record(job_id, summary=summary, files=files, progress=1.0, message="done", state="done")
        log.info("job %s done in %.2f s", job_id, time.perf_counter() - started)

    def _record(self, job_id: str, **fields) -> None:
        """A job's outcome written to the store, retried every RETRY_S while the data folder cannot take
        it (a full disk): the job never stays `running` for ever. Given up only when the engine stops
        (the next start reports the job interrupted)."""
        said = False
        while True:
            try:
                self.store.update(job_id, **fields)
                return
            except StorageUnavailable as exc:
                if not said:
                    log.warning("job %s: its outcome (%s) waits to be recorded: %s", job_id, fields["state"], exc)
                    said = True
                if self._stop.wait(RETRY_S):
                    return

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        for event in self._cancel.values():
            event.set()
        self._thread.join(timeout=10)
