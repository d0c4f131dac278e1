"""A local stand-in for the Hugging Face Hub, for the engine's API tests and the plugin's download tests.

`FakeHub` answers the Hub's `/{repo}/resolve/{revision}/{filename}` with the headers hf_hub_download reads
(X-Repo-Commit, ETag, Content-Length) and streams the file in small chunks, slowly, or stops half-way
until the test lets it go on. `point_hub_at` sets huggingface_hub the way `HF_ENDPOINT` / `HF_HUB_CACHE` /
`HF_HUB_OFFLINE` would at import, in a test (through its monkeypatch) or in an engine process started for
a test. The engine's own download code runs unchanged. Standard library only (the QGIS env has no torch).
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CHUNK = 4096
COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    """Serves `files` ({repo/filename: bytes}) in the Hub's URL layout. `delay` seconds between chunks;
    with `pause_at` bytes, the body stops there (`paused` is set) until `go_on` is set."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.delay, self.pause_at = files, 0.0, None
        self.paused, self.go_on = threading.Event(), threading.Event()
        self.gets = 0
        hub_ = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _headers(self) -> bytes | None:
                match = re.fullmatch(r"/(.+)/resolve/([^/]+)/(.+)", self.path)
                data = hub_.files.get(f"{match.group(1)}/{match.group(3)}") if match else None
                if data is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("X-Repo-Commit", COMMIT)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                self.send_response(200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                return data

            def do_HEAD(self):
                self._headers()

            def do_GET(self):
                data = self._headers()
                if data is None:
                    return
                hub_.gets += 1
                try:
                    for start in range(0, len(data), CHUNK):
                        if hub_.pause_at is not None and start == hub_.pause_at:
                            hub_.paused.set()
                            hub_.go_on.wait(60)
                        self.wfile.write(data[start:start + CHUNK])
                        self.wfile.flush()
                        time.sleep(hub_.delay)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.go_on.set()
        self.server.shutdown()
        self.server.server_close()


def point_hub_at(endpoint: str, cache: Path | str, patch=None) -> None:
    """huggingface_hub downloads from `endpoint` into `cache`, online, in CHUNK-sized pieces (so progress
    moves on a small file). `patch`: a test's monkeypatch (undone after it); without one this process's
    settings change for good (an engine process started for a test)."""
    from huggingface_hub import constants

    if patch is None:
        import pytest

        patch = pytest.MonkeyPatch()
    patch.delenv("HF_HUB_OFFLINE", raising=False)
    patch.setenv("HF_HUB_CACHE", str(cache))
    for name, value in {"HF_HUB_OFFLINE": False, "HF_HUB_CACHE": str(cache), "ENDPOINT": endpoint,
                        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
                        "DOWNLOAD_CHUNK_SIZE": CHUNK}.items():
        patch.setattr(constants, name, value)
