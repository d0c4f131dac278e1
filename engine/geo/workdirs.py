"""Work folders: where a run writes its outputs before they are renamed into place, all together.

A run writes into a hidden folder inside the output folder (`.farslip-work-<host>-<pid>-…`: the same file
system, so the final renames are atomic) and removes it however the run ends. Only a process killed
outright (`kill -9`, a power cut) leaves one behind, holding partial outputs that may be gigabytes: the
next run into that folder on the same computer removes those whose process no longer exists. Folders of
another computer (a shared network folder) and of live processes are left alone.

`publish_together` puts a run's outputs in place all or nothing: a failure or a cancel part-way removes
those already moved and brings back the earlier run's they replaced, so a folder never holds part of a
run's results (a heat map without its summary) nor a mix of two runs'.
A run that fails because the disk filled (or a file reached its size limit) says so (`work_folder`): the
disk is looked at before the work folder goes, while the partial outputs still take the space they filled.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

from engine.errors import Cancelled, FarSLIPError, InputError, OutputError, disk_reason, failure_line

_PREFIX = ".farslip-work-"
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]  # a tag of this computer's name
_OWNED = re.compile(rf"^{re.escape(_PREFIX)}([0-9a-f]{{8}})-(\d+)-")


def check_output_folder(out: Path) -> None:
    """An InputError, before any work, for an output folder no run can write into: a path holding a line
    break or another control character (GDAL cannot create a GeoPackage under it), or an existing file."""
    if any(ord(c) < 32 or ord(c) == 127 for c in str(out)):
        raise InputError(f"the output folder {str(out)!r} holds a line break or another control character in its "
                         f"path, under which GeoPackage files cannot be written: choose another folder")
    if out.exists() and not out.is_dir():
        raise InputError(f"the output folder {out} is a file, not a folder: choose a folder (it is made when missing)")


def make_workdir(out_dir: str | Path) -> Path:
    """A new work folder inside `out_dir` (made when missing), after removing abandoned ones."""
    out = Path(out_dir)
    check_output_folder(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        remove_abandoned(out)
        return Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{_HOST}-{os.getpid()}-", dir=out))
    except OSError as exc:
        raise InputError(f"cannot write to output folder {out}: {exc.strerror or exc}") from None


@contextmanager
def work_folder(out_dir: str | Path) -> Iterator[Path]:
    """A new work folder in `out_dir` (`make_workdir`), removed however the block ends. A failed write in
    the block that the disk explains (`engine.errors.disk_reason`: full, read-only, a file at its size
    limit) becomes an OutputError naming that, judged before the partial outputs are removed."""
    work = make_workdir(out_dir)
    try:
        yield work
    except FarSLIPError:
        raise
    except Exception as exc:
        reason = disk_reason(exc, out_dir, work)
        if reason is None:
            raise
        raise OutputError(failure_line(Path(out_dir), reason), reason) from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)


PublishStep = tuple[Callable[[], None], Path]  # (puts one finished output in place, the path it takes)


def moving(finished: Path, final: Path) -> PublishStep:
    """The step that renames a finished file of the work folder to its final path (the same file system)."""
    return lambda: os.replace(finished, final), final


def publish_together(work: Path, steps: Iterable[PublishStep], cancel: threading.Event | None = None,
                     replaces: Iterable[Path] = ()) -> None:
    """Take the steps in order, all or nothing. An earlier output at a step's path, and each of `replaces`
    (an earlier run's outputs that this run's do not overwrite), is first put aside in `work`; a cancel
    between steps, an error or Ctrl-C removes the outputs already put in place and brings the earlier ones
    back (and stops with Cancelled on a cancel). Steps come from an iterable, so a step made last (a
    summary) can record how long the others took."""
    aside: list[tuple[Path, Path]] = []  # (an earlier output, where it waits in the work folder)
    moved: list[Path] = []

    def put_aside(path: Path) -> None:
        if path.exists() and all(path != earlier for earlier, _ in aside):
            waiting = work / f".earlier-{len(aside)}-{path.name}"
            os.replace(path, waiting)
            aside.append((path, waiting))

    try:
        for path in replaces:
            put_aside(path)
        for publish, final in steps:
            if cancel is not None and cancel.is_set():
                raise Cancelled("cancelled")
            put_aside(final)
            publish()
            moved.append(final)
    except BaseException as exc:
        for path in moved:
            path.unlink(missing_ok=True)
        for path, waiting in aside:
            os.replace(waiting, path)
        if isinstance(exc, PermissionError):  # Windows: a file open in another program cannot be replaced
            name = Path(exc.filename).name if exc.filename else "an output"
            reason = f"{name} cannot be replaced ({exc.strerror or exc}): is it open in another program, e.g. QGIS?"
            raise OutputError(f"cannot write the outputs in {work.parent}: {reason} Close it, or choose another "
                              f"output name or folder", reason) from exc
        raise


def remove_abandoned(out: Path) -> list[Path]:
    """Remove the work folders in `out` of processes of this computer that no longer run; returns them."""
    if os.name != "posix":  # (no harmless "is it alive" probe there: os.kill would end the process)
        return []
    removed = []
    for entry in out.iterdir():
        owner = _OWNED.match(entry.name)
        if owner is None or owner[1] != _HOST or not entry.is_dir() or _alive(int(owner[2])):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
