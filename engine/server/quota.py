"""The total quota of uploads (`--max-uploads-mb`), held by concurrent uploads too.

An upload reserves the bytes it is about to write before writing them (all of a declared
Content-Length at once; a body without one, a step at a time), under one lock with every other
reservation, so the uploads on record plus those being received never exceed the quota, however
many arrive together. A finished upload turns its reservation into its record in the store; a
refused or failed one gives it back.
"""

from __future__ import annotations

import threading


class UploadQuota:
    def __init__(self, store, limit_bytes: int):
        self.store, self.limit = store, limit_bytes
        self._reserved = 0
        self._lock = threading.Lock()

    def held(self) -> tuple[int, int]:
        """Bytes of the uploads on record, and bytes reserved by those being received."""
        with self._lock:
            return self.store.uploads_size(), self._reserved

    def reserve(self, size: int) -> bool:
        """Hold `size` more bytes for an upload being received; False (nothing held) when over the quota."""
        with self._lock:
            if self.store.uploads_size() + self._reserved + size > self.limit:
                return False
            self._reserved += size
            return True

    def release(self, size: int) -> None:
        """Give back bytes reserved by an upload that was refused, failed or has been recorded."""
        with self._lock:
            self._reserved -= size

    def record(self, upload_id: str, path, size: int, reserved: int) -> None:
        """Record the finished upload in the store and give back its reservation, in one step."""
        with self._lock:
            self.store.add_upload(upload_id, path, size)
            self._reserved -= reserved
