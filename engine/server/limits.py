"""ASGI middleware: request body caps and one log line per request (method, path, status, ms, job)."""

from __future__ import annotations

import json
import logging
import re
import time

from starlette.exceptions import HTTPException

log = logging.getLogger("farslip.api")
_JOB_IN_PATH = re.compile(r"/jobs/([0-9a-f]{32})")


class RequestLimitsAndLog:
    def __init__(self, app, max_body: int, unlimited_paths: tuple[str, ...] = ()):
        self.app = app
        self.max_body = max_body
        self.unlimited = unlimited_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        path = scope.get("path", "")
        state = {"status": 0, "job": None}
        match = _JOB_IN_PATH.search(path)
        if match:
            state["job"] = match.group(1)
        limited = not path.startswith(self.unlimited)

        if limited:
            headers = dict(scope.get("headers") or [])
            declared = headers.get(b"content-length", b"")
            if declared.isdigit() and int(declared) > self.max_body:
                await self._too_large(send, state)
                self._log(scope, state, started)
                return

        received = 0

        async def capped_receive():
            nonlocal received
            message = await receive()
            if limited and message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise _TooLarge()
            return message

        async def logging_send(message):
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                for key, value in message.get("headers", []):
                    if key.lower() == b"x-job-id":
                        state["job"] = value.decode()
            await send(message)

        try:
            await self.app(scope, capped_receive, logging_send)
        except _TooLarge:
            if state["status"] == 0:
                await self._too_large(send, state)
        except BaseException:
            if state["status"] == 0:  # the server's error handler answers 500 after this: log it as such
                state["status"] = 500
            raise
        finally:
            self._log(scope, state, started)

    async def _too_large(self, send, state) -> None:
        body = json.dumps({"detail": f"request body larger than {self.max_body // 1024} KB"}).encode()
        state["status"] = 413
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def _log(scope, state, started) -> None:
        log.info("%s %s %s %.1f ms%s", scope.get("method"), scope.get("path"), state["status"],
                 (time.perf_counter() - started) * 1000, f" job={state['job']}" if state["job"] else "")


class _TooLarge(HTTPException):
    """Raised from `receive`; an HTTPException so that FastAPI's body parsing passes it on as a 413."""

    def __init__(self):
        super().__init__(413, "request body too large")
