"""The uvicorn server `farslip serve` runs: it wakes the app's waiting clients as soon as it is told
to stop; and the process settings that keep many connections from stopping it.

uvicorn stops by closing its sockets, then waiting for open requests to end, and only then runs the
app's shutdown; a long-poll (`?wait=` up to a minute) or an event stream (until its job ends) would
hold the stop up that long. `on_stop` (the app's `JobWatch.close`) answers them first.

Every open connection takes a file descriptor, and a connection that never finishes its request is
held by uvicorn (it has no time limit for a request's head): `raise_open_files_limit` lifts the
process's limit from the usual 1,024 to what the system allows, and once it is reached anyway asyncio
logs each refused connection with a traceback, many times a second (221 MB of log in 43 s), which
`OncePerMinute` reduces to a line a minute. An engine open to a network is best put behind a reverse
proxy that times out slow clients.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import uvicorn

MANY_FILES = 1 << 20  # the open-files limit asked for when the system sets none


class StoppingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, on_stop: Callable[[], None]):
        super().__init__(config)
        self._on_stop = on_stop

    async def shutdown(self, sockets=None) -> None:
        self._on_stop()
        await super().shutdown(sockets)


def raise_open_files_limit() -> int | None:
    """Lift the soft limit of open files to the hard one (at most MANY_FILES); the limit now, or None
    where the system has no such limit (Windows)."""
    try:
        import resource
    except ImportError:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = MANY_FILES if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ValueError, OSError):  # macOS caps it lower than it reports: keep what there is
        return soft
    return wanted


class OncePerMinute(logging.Filter):
    """Lets a message through once a minute at most (its repeats meanwhile dropped, then counted)."""

    def __init__(self, period_s: float = 60.0):
        super().__init__()
        self.period_s = period_s
        self._last: dict[str, tuple[float, int]] = {}  # message → (when last let through, repeats dropped since)

    def filter(self, record: logging.LogRecord) -> bool:
        message, now = record.getMessage(), time.monotonic()
        last, dropped = self._last.get(message, (None, 0))
        if last is not None and now - last < self.period_s:
            self._last[message] = (last, dropped + 1)
            return False
        self._last[message] = (now, 0)
        if dropped:
            record.msg, record.args = f"{message} (and {dropped} times more in the last minute)", ()
        if len(self._last) > 1000:  # messages that vary: keep the memory bounded
            self._last.clear()
        return True
