"""Sending a result file to a client: from a handle opened before the answer starts, a MB at a time,
and closed however the answer ends.

A delete or expiry of the job while the file is sent cannot break the download half-way (the file's
data stays until the handle is closed). The handle is closed when the file has gone out, when the
client goes away, and when the client stops reading: a client that takes no data for `STALL_S`
seconds (a full socket buffer that never drains) is dropped. So a stalled or vanished client holds
neither a file handle (nor, after a delete, the disk space of the file) nor a connection for longer
than that.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import BinaryIO

from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

log = logging.getLogger("farslip.api")

SEND_BYTES = 2**20  # sent a MB at a time
STALL_S = 60.0  # a client that takes nothing for this long is dropped


class FileSending(Response):
    """The answer that sends the open file `handle` (closed by this answer, whatever happens)."""

    def __init__(self, handle: BinaryIO, name: str, media_type: str):
        self.handle = handle
        super().__init__(media_type=media_type, headers={
            "Content-Length": str(os.fstat(handle.fileno()).st_size),
            "Content-Disposition": f'attachment; filename="{name}"'})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._send_within(send, {"type": "http.response.start", "status": self.status_code,
                                           "headers": self.raw_headers})
            while chunk := await run_in_threadpool(self.handle.read, SEND_BYTES):
                await self._send_within(send, {"type": "http.response.body", "body": chunk, "more_body": True})
            await self._send_within(send, {"type": "http.response.body", "body": b"", "more_body": False})
        except (TimeoutError, OSError) as exc:  # stalled or gone: the server closes the connection
            log.info("a download of %s ended early: %s", os.path.basename(self.handle.name),
                     "the client read nothing for %.0f s" % STALL_S if isinstance(exc, TimeoutError) else exc)
        finally:
            self.handle.close()

    @staticmethod
    async def _send_within(send: Send, message: dict) -> None:
        await asyncio.wait_for(send(message), STALL_S)
