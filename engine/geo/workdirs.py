"""Work folders: where a run writes its outputs before they are renamed into place.

A run writes into a hidden folder inside the output folder (`.farslip-work-<host>-<pid>-…`: the same file
system, so the final renames are atomic) and removes it however the run ends. Only a process killed
outright (`kill -9`, a power cut) leaves one behind, holding partial outputs that may be gigabytes: the
next run into that folder on the same computer removes those whose process no longer exists. Folders of
another computer (a shared network folder) and of live processes are left alone.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

from engine.errors import InputError

_PREFIX = ".farslip-work-"
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]  # a tag of this computer's name
_OWNED = re.compile(rf"^{re.escape(_PREFIX)}([0-9a-f]{{8}})-(\d+)-")


def make_workdir(out_dir: str | Path) -> Path:
    """A new work folder inside `out_dir` (made when missing), after removing abandoned ones."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        remove_abandoned(out)
        return Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{_HOST}-{os.getpid()}-", dir=out))
    except OSError as exc:
        raise InputError(f"cannot write to output folder {out}: {exc.strerror or exc}") from None


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
