"""A gate for synchronous compute requests (region labelling): a few run at once, a few more wait —
on the event loop, holding no worker thread — and any beyond are refused with a 429.

Without it each such request took a thread of the server's pool for as long as it ran and waited,
so one client sending many at once left no thread for anyone's status, list, cancel or download
(60 labelling requests of 512 large regions: `GET /v1/jobs` took 280 s). The gate's semaphore is
made on first use in the running loop (a test client runs the same app in a new loop each time).
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import AsyncIterator

from fastapi import HTTPException


class Gate:
    def __init__(self, what: str, at_once: int, waiting: int):
        self.what, self.at_once, self.waiting = what, at_once, waiting
        self._inside = 0  # running and waiting; only touched on the event loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._semaphore: asyncio.Semaphore | None = None

    @asynccontextmanager
    async def passage(self) -> AsyncIterator[None]:
        """Enter (waiting for a turn), or a 429 when `at_once` run and `waiting` wait already."""
        if self._inside >= self.at_once + self.waiting:
            raise HTTPException(429, f"{self.what} is busy ({self.at_once} requests running, {self.waiting} "
                                     f"waiting): try again in a moment", headers={"Retry-After": "5"})
        if self._loop is not asyncio.get_running_loop():
            self._loop, self._semaphore = asyncio.get_running_loop(), asyncio.Semaphore(self.at_once)
        self._inside += 1
        try:
            async with self._semaphore:
                yield
        finally:
            self._inside -= 1
