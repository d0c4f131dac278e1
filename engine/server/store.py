"""Job state in SQLite (the engine's data folder), so a restarted engine knows what finished.

A job is `queued` → `running` → `done` | `failed` | `cancelled`. Result files live in the job's
folder and are listed (and served) only once the job is `done`: the pipeline renames each file
into place when complete, and the state turns `done` after the last one. On start-up, jobs left
`queued`/`running` by a stopped engine are marked `failed` and their folders emptied, and what an
engine killed mid-write left behind (an upload's `.partial` file, job folders and uploads no record
names) is removed.

One engine serves a data folder: the store holds a lock on `engine.lock` from start to stop, and a
second engine started on the folder is refused (`FolderInUse`) before it reads or changes anything.
A damaged job database is set aside (`engine.sqlite.damaged-…`) and a new one started; a job record
whose JSON cannot be read is reported failed ("damaged"), never an error for the whole list.

Every change to a job adds one to its `revision` (0 when created) and is then announced to the
store's listeners (`on_change`), which is how clients waiting on a job are woken.

Ids are checked (`engine.server.ids`) before any path is built from one: a malformed id is simply not
found. A job and an upload expire `ttl_s` after the job ended (or the upload was made); neither is
forgotten (deleted, expired) while a queued or running job uses it (`engine.server.uses`): deleting
one answers `InUse` (409) naming that job.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from filelock import FileLock, Timeout

from engine.errors import FarSLIPError
from engine.server.ids import is_id, new_id, shown
from engine.server.uses import Uses, uses

log = logging.getLogger("farslip.api")

ACTIVE = ("queued", "running")
DAMAGED = "this job's record in the engine's database is damaged: delete the job (DELETE /v1/jobs/<id>)"
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class StorageUnavailable(FarSLIPError):
    """The data folder cannot take a write: full (`status` 507) or read-only / not writable (503).
    Nothing was half-written; the same request succeeds once the folder can be written again."""

    def __init__(self, folder: Path, full: bool, detail: str):
        self.status = 507 if full else 503
        what = "is full" if full else "cannot be written"
        super().__init__(f"the engine's data folder {folder} {what} ({detail}); free space or fix its "
                         f"permissions, then retry")


class FolderInUse(FarSLIPError):
    """Another engine serves this data folder (the store could not take its lock)."""

    status = 409


@contextlib.contextmanager
def storage_errors(folder: Path):
    """Turn a failed write under `folder` (a file or the job database) into StorageUnavailable."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        text = str(exc)
        if "full" in text:
            raise StorageUnavailable(folder, True, text) from None
        if "readonly" in text or "read-only" in text or "unable to open" in text or "disk I/O" in text:
            raise StorageUnavailable(folder, False, text) from None
        raise
    except OSError as exc:
        if exc.errno in FULL_ERRNOS or exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR):
            raise StorageUnavailable(folder, exc.errno in FULL_ERRNOS, exc.strerror or str(exc)) from None
        raise

FINAL = ("done", "failed", "cancelled")


class InUse(FarSLIPError):
    """A job or an upload that a queued or running job uses cannot be forgotten yet (the API's 409)."""

    status = 409


class Gone(FarSLIPError):
    """A job's request uses a job or an upload that was forgotten meanwhile (the API's 404)."""

    status = 404

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, state TEXT NOT NULL, progress REAL NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '', created REAL NOT NULL, updated REAL NOT NULL, expires REAL NOT NULL,
    request TEXT NOT NULL, summary TEXT, files TEXT, revision INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS uploads (
    id TEXT PRIMARY KEY, path TEXT NOT NULL, size INTEGER NOT NULL, created REAL NOT NULL, expires REAL NOT NULL
);
"""


@dataclass
class JobRecord:
    id: str
    kind: str
    state: str
    progress: float
    message: str
    created: float
    updated: float
    expires: float
    request: dict
    summary: dict | None
    files: list[str]
    revision: int = 0


class JobStore:
    def __init__(self, data_dir: Path, ttl_s: float, owner: str = ""):
        """`owner` says who holds the folder (pid, address) to a second engine started on it."""
        self.data_dir = data_dir
        self.ttl_s = ttl_s
        self.jobs_dir = data_dir / "jobs"
        self.uploads_dir = data_dir / "uploads"
        self._lock = threading.Lock()
        self._listeners: list[Callable[[str], None]] = []
        with storage_errors(data_dir):  # a read-only or full data folder: one line at start, no traceback
            for folder in (data_dir, self.jobs_dir, self.uploads_dir):
                if folder.exists() and not folder.is_dir():
                    raise StorageUnavailable(folder, False, "a file, not a folder: move it aside")
                folder.mkdir(parents=True, exist_ok=True)
            self._folder_lock = self._claim(owner)
            try:
                self._db = self._open_database()
            except sqlite3.DatabaseError as exc:
                if isinstance(exc, sqlite3.OperationalError):  # full, read-only, locked: not damage
                    raise
                self._set_aside_damaged(exc)
                self._db = self._open_database()
            self._recover()

    def _claim(self, owner: str, lock: FileLock | None = None) -> FileLock:
        """The data folder's lock, or FolderInUse naming the engine that holds it."""
        # (not thread-local: taken when the app is made, released by its lifespan's thread)
        lock = lock or FileLock(self.data_dir / "engine.lock", timeout=0, thread_local=False)
        try:
            lock.acquire()
        except Timeout:
            try:
                holder = (self.data_dir / "engine.owner").read_text(encoding="utf-8").strip()
            except OSError:
                holder = ""
            raise FolderInUse(f"the data folder {self.data_dir} is in use by another engine"
                              f"{f' ({holder})' if holder else ''}: stop that one first, or give this one its own "
                              f"folder (--data-dir)") from None
        self._owner = owner or f"pid {os.getpid()}"
        try:
            (self.data_dir / "engine.owner").write_text(self._owner, encoding="utf-8")
        except OSError:  # (a full disk: the engine still starts and serves what it has; the name is a courtesy)
            pass
        return lock

    def _open_database(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.data_dir / "engine.sqlite", check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL's advice: no disk flush on every progress update
            db.executescript(_SCHEMA)
            if "revision" not in {row[1] for row in db.execute("PRAGMA table_info(jobs)")}:
                db.execute("ALTER TABLE jobs ADD COLUMN revision INTEGER NOT NULL DEFAULT 0")  # older folder
            db.execute("SELECT COUNT(*) FROM jobs").fetchone()  # (reads the table: damage shows here)
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def _set_aside_damaged(self, exc: Exception) -> None:
        """Rename a damaged job database (and its WAL files) aside; the jobs it recorded are forgotten
        (their folders are removed as unrecorded by `_recover`)."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for suffix in ("", "-wal", "-shm"):
            path = self.data_dir / f"engine.sqlite{suffix}"
            if path.exists():
                path.rename(self.data_dir / f"engine.sqlite{suffix}.damaged-{stamp}")
        log.warning("the job database %s was damaged (%s): set aside as engine.sqlite.damaged-%s, a new one "
                    "started; the jobs it recorded are forgotten", self.data_dir / "engine.sqlite", exc, stamp)

    def hold(self) -> None:
        """Hold the data folder again after `release` (an app started a second time): FolderInUse when
        another engine took it meanwhile."""
        if not self._folder_lock.is_locked:
            with storage_errors(self.data_dir):
                self._claim(self._owner, self._folder_lock)

    def release(self) -> None:
        """Let another engine serve the data folder (this one is stopping)."""
        if self._folder_lock.is_locked:
            self._folder_lock.release(force=True)

    def _write(self, sql: str, parameters=()) -> sqlite3.Cursor:
        """One write to the job database under the lock; a full or read-only folder → StorageUnavailable."""
        with self._lock, storage_errors(self.data_dir):
            return self._db.execute(sql, parameters)

    def on_change(self, listener: Callable[[str], None]) -> None:
        """Call `listener(job_id)` after every change to a job (from whichever thread made it)."""
        self._listeners.append(listener)

    def _changed(self, *job_ids: str) -> None:
        for job_id in job_ids:
            for listener in self._listeners:
                listener(job_id)

    # --- jobs ----------------------------------------------------------------------------------
    def _recover(self) -> None:
        """Jobs a stopped engine left queued or running marked failed, their folders removed; then what
        no record names (a job folder, an upload file, an upload's `.partial` file) removed."""
        with self._lock:
            rows = self._db.execute(f"SELECT id FROM jobs WHERE state IN {ACTIVE}").fetchall()
            now = time.time()
            for state, message in (("running", "interrupted: the engine stopped before the job finished"),
                                   ("queued", "interrupted: the engine stopped before the job started; submit it "
                                              "again")):
                self._db.execute("UPDATE jobs SET state='failed', message=?, updated=?, expires=?, "
                                 "revision = revision + 1 WHERE state = ?", (message, now, now + self.ttl_s, state))
            jobs = {row[0] for row in self._db.execute("SELECT id FROM jobs")}
            uploads = {Path(row[0]).name for row in self._db.execute("SELECT path FROM uploads")}
        for (job_id,) in rows:
            if is_id(job_id):
                shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
        for folder in self.jobs_dir.iterdir():
            if is_id(folder.name) and folder.name not in jobs:
                shutil.rmtree(folder, ignore_errors=True)
        for file in self.uploads_dir.iterdir():
            if file.is_file() and file.name not in uploads and (file.name.endswith(".partial") or
                                                                 is_id(file.name.split(".")[0])):
                file.unlink(missing_ok=True)

    def job_dir(self, job_id: str) -> Path:
        if not is_id(job_id):  # routes refuse such ids first: this never builds a path from one
            raise ValueError(f"not a job id: {shown(str(job_id))}")
        return self.jobs_dir / job_id

    def uses(self, request: dict) -> Uses:
        """The jobs and uploads of this engine whose files `request` reads."""
        return uses(request, self.jobs_dir, self.uploads_dir)

    def create(self, kind: str, request: dict) -> JobRecord:
        """Record a queued job; `Gone` when a job or an upload its request uses was forgotten since the
        request was checked (checked and recorded under the lock that `delete` takes too)."""
        now = time.time()
        job_id = new_id()
        needs = self.uses(request)
        with self._lock, storage_errors(self.data_dir):
            for used in sorted(needs.jobs):
                if self._db.execute("SELECT 1 FROM jobs WHERE id = ?", (used,)).fetchone() is None:
                    raise Gone(f"job {used} was deleted meanwhile")
            for used in sorted(needs.uploads):
                if self._db.execute("SELECT 1 FROM uploads WHERE id = ?", (used,)).fetchone() is None:
                    raise Gone(f"upload {used} was deleted meanwhile")
            self._db.execute("INSERT INTO jobs (id, kind, state, created, updated, expires, request) "
                             "VALUES (?, ?, 'queued', ?, ?, ?, ?)",
                             (job_id, kind, now, now, now + self.ttl_s, json.dumps(request)))
        return self.get(job_id)

    def _users(self) -> dict[str, list[tuple[str, str, str]]]:
        """{job or upload id: [(id, kind, state) of each queued or running job using it]} (under the lock)."""
        users: dict[str, list[tuple[str, str, str]]] = {}
        for job_id, kind, state, request in self._db.execute(
                f"SELECT id, kind, state, request FROM jobs WHERE state IN {ACTIVE} ORDER BY created"):
            try:
                needs = self.uses(json.loads(request))
            except (ValueError, TypeError):  # a damaged record: it cannot run, it uses nothing
                continue
            for used in needs.jobs | needs.uploads:
                users.setdefault(used, []).append((job_id, kind, state))
        return users

    def _refuse_if_used(self, what: str, used: str) -> None:
        users = [user for user in self._users().get(used, []) if user[0] != used]
        if users:
            job_id, kind, state = users[0]
            more = f" (and {len(users) - 1} more)" if len(users) > 1 else ""
            raise InUse(f"{what} {used} is used by {state} {kind} job {job_id}{more}: cancel or delete that "
                        f"job first, or wait until it has ended")

    def get(self, job_id: str) -> JobRecord | None:
        if not is_id(job_id):
            return None
        with self._lock:
            row = self._db.execute("SELECT id, kind, state, progress, message, created, updated, expires, request, "
                                   "summary, files, revision FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            return None
        try:
            request, summary = json.loads(row[8]), json.loads(row[9]) if row[9] else None
            files = json.loads(row[10]) if row[10] else []
            if not (isinstance(request, dict) and isinstance(files, list) and isinstance(summary, (dict, type(None)))):
                raise ValueError("not the JSON a job record holds")
        except (ValueError, TypeError):  # (edited by hand, or a disk that lost a block)
            state = row[2] if row[2] in ACTIVE else "failed"
            return JobRecord(row[0], row[1], state, row[3], DAMAGED, row[5], row[6], row[7], {}, None, [], row[11])
        return JobRecord(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], request, summary, files,
                         row[11])

    def list(self, limit: int = 100) -> list[JobRecord]:
        with self._lock:
            ids = [r[0] for r in self._db.execute("SELECT id FROM jobs ORDER BY created DESC LIMIT ?", (limit,))]
        return [job for job in (self.get(i) for i in ids) if job is not None]

    def update(self, job_id: str, **fields) -> None:
        if "summary" in fields:
            fields["summary"] = json.dumps(fields["summary"])
        if "files" in fields:
            fields["files"] = json.dumps(fields["files"])
        fields["updated"] = time.time()
        if fields.get("state") in FINAL:  # a finished job is kept for its time to live from now
            fields["expires"] = fields["updated"] + self.ttl_s
        columns = ", ".join(f"{k} = ?" for k in fields)
        self._write(f"UPDATE jobs SET {columns}, revision = revision + 1 WHERE id = ?", (*fields.values(), job_id))
        self._changed(job_id)

    def set_state_if(self, job_id: str, expected: tuple[str, ...], state: str, message: str = "") -> bool:
        """Atomically move a job to `state` if it is in one of `expected`; True when it moved."""
        now = time.time()
        expires = ", expires = ?" if state in FINAL else ""
        cur = self._write(f"UPDATE jobs SET state = ?, message = ?, updated = ?{expires}, revision = revision + 1 "
                          f"WHERE id = ? AND state IN ({','.join('?' * len(expected))})",
                          (state, message, now, *([now + self.ttl_s] if expires else []), job_id, *expected))
        if cur.rowcount == 1:
            self._changed(job_id)
        return cur.rowcount == 1

    def check_unused(self, job_id: str) -> None:
        """`InUse` when a queued or running job uses this job's files."""
        with self._lock:
            self._refuse_if_used("job", job_id)

    def delete(self, job_id: str) -> bool:
        """Forget a job and remove its folder; True when it existed (deleting twice is harmless).
        `InUse` (nothing done) when a queued or running job uses its files."""
        if not is_id(job_id):
            return False
        with self._lock, storage_errors(self.data_dir):
            self._refuse_if_used("job", job_id)
            cur = self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
        self._changed(job_id)
        return cur.rowcount == 1

    def count_active(self) -> int:
        with self._lock:
            return self._db.execute(f"SELECT COUNT(*) FROM jobs WHERE state IN {ACTIVE}").fetchone()[0]

    # --- uploads -------------------------------------------------------------------------------
    def add_upload(self, upload_id: str, path: Path, size: int) -> None:
        now = time.time()
        self._write("INSERT INTO uploads (id, path, size, created, expires) VALUES (?, ?, ?, ?, ?)",
                    (upload_id, str(path), size, now, now + self.ttl_s))

    def uploads_size(self) -> int:
        """Bytes held by the uploads on record."""
        with self._lock:
            return int(self._db.execute("SELECT COALESCE(SUM(size), 0) FROM uploads").fetchone()[0])

    def delete_upload(self, upload_id: str) -> bool:
        """Forget an upload and remove its file; True when it existed. `InUse` (nothing done) when a
        queued or running job reads it."""
        if not is_id(upload_id):
            return False
        with self._lock, storage_errors(self.data_dir):
            row = self._db.execute("SELECT path FROM uploads WHERE id = ?", (upload_id,)).fetchone()
            if row is None:
                return False
            self._refuse_if_used("upload", upload_id)
            self._db.execute("DELETE FROM uploads WHERE id = ?", (upload_id,))
        Path(row[0]).unlink(missing_ok=True)
        return True

    def upload_path(self, upload_id: str) -> Path | None:
        if not is_id(upload_id):
            return None
        with self._lock:
            row = self._db.execute("SELECT path FROM uploads WHERE id = ?", (upload_id,)).fetchone()
        return Path(row[0]) if row and Path(row[0]).exists() else None

    # --- expiry --------------------------------------------------------------------------------
    def expire(self, now: float | None = None) -> int:
        """Remove finished jobs and uploads past their expiry time (and their files), but none that a
        queued or running job uses (they go at the first pass after it has ended)."""
        now = now or time.time()
        with self._lock, storage_errors(self.data_dir):
            used = self._users()
            jobs = [r[0] for r in self._db.execute(
                f"SELECT id FROM jobs WHERE expires < ? AND state IN {FINAL}", (now,)) if r[0] not in used]
            uploads = [r for r in self._db.execute("SELECT id, path FROM uploads WHERE expires < ?", (now,))
                       if r[0] not in used]
            self._db.executemany("DELETE FROM jobs WHERE id = ?", [(job_id,) for job_id in jobs])
            self._db.executemany("DELETE FROM uploads WHERE id = ?", [(upload_id,) for upload_id, _ in uploads])
        for job_id in jobs:
            if is_id(job_id):
                shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
        self._changed(*jobs)
        for _, path in uploads:
            Path(path).unlink(missing_ok=True)
        return len(jobs) + len(uploads)

    def close(self) -> None:
        with self._lock:
            self._db.close()
