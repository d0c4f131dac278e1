"""Errors the engine raises for problems a user can fix.

Every error here carries one readable line: the CLI prints it and exits non-zero, the HTTP API
turns it into a 4xx answer. Anything else that escapes is a bug.
"""

EXIT_USAGE = 2  # the CLI's exit status for a FarSLIPError or a bad argument
EXIT_INTERRUPTED = 130  # ... for Ctrl-C (a stop signal exits 128 + its number)


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (its type name when the message is empty): what a
    one-line report quotes of a library's exception."""
    text = str(exc).strip()
    cause = exc.__cause__ or exc.__context__
    if cause is not None and "see previous exception" in text.lower():  # rasterio's "Read failed. See
        return first_line(cause)  # previous exception for details": the previous one says what failed
    return text.splitlines()[0] if text else type(exc).__name__


class FarSLIPError(Exception):
    """A problem with the user's input or set-up, described in one line."""


class InputError(FarSLIPError, ValueError):
    """Bad input data or arguments: an image, a class list, an option."""


class ModelError(FarSLIPError):
    """A model could not be found, downloaded or loaded."""


class Cancelled(FarSLIPError):
    """A run was cancelled; nothing was written."""


class OutputError(FarSLIPError):
    """The outputs could not be written where asked: a full disk, a read-only folder, a file-size limit.
    `reason` is the disk's part of the message ("the disk is full"), for callers that word it their way."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


_FULL_WORDS = ("no space left", "disk is full", "disk full", "quota exceeded", "read-only file system")
_TOO_LARGE_WORDS = ("file too large",)
FAT32_LARGEST_FILE = 2**32 - 1  # bytes; a write past it fails (EFBIG), a file stops growing exactly there
TOO_LARGE = ("a file reached the largest size allowed there (4 GB a file on a FAT32 drive, or this process's "
             "file-size limit, ulimit -f)")
# libraries whose errors can be a write that failed (their words seldom say why: libtiff prints it instead)
_WRITING_LIBRARIES = ("rasterio", "pyogrio", "sqlite3", "fiona", "osgeo")


def output_failure(exc: BaseException, folder) -> str | None:
    """One line for an error writing outputs into `folder` that is the disk's, not the input's (see
    `disk_reason`); None for any other error."""
    from pathlib import Path

    reason = None if folder is None else disk_reason(exc, folder)
    return None if reason is None else failure_line(Path(folder), reason)


def disk_reason(exc: BaseException, folder, work=None) -> str | None:
    """Why writing into `folder` failed when the disk explains it: no space left or a quota reached (an
    OSError's errno, or GDAL's, SQLite's or libtiff's words for it), a read-only file system, a file grown
    to the largest size allowed (EFBIG: 4 GB on a FAT32 drive, the process's `ulimit -f`); and, for an
    OSError or a writing library's error that says none of that, the disk holding `folder` with next to no
    room left or a file in `work` at a size limit. `work`: the run's work folder, still holding its partial
    outputs (libtiff only prints what failed, so a file there at a limit is how that shows, and the space
    they take is how a full disk shows: once removed, the disk has room again). None otherwise."""
    import errno
    import shutil
    from pathlib import Path

    reasons = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is reached",
               errno.EROFS: "the file system is read-only", errno.EFBIG: TOO_LARGE}
    chain, seen, writing = exc, set(), False
    while chain is not None and id(chain) not in seen:
        seen.add(id(chain))
        reason = reasons.get(getattr(chain, "errno", None)) if isinstance(chain, OSError) else None
        text = str(chain).lower()
        if reason is None and any(word in text for word in _FULL_WORDS):
            reason = "the disk is full" if "read-only" not in text else "the file system is read-only"
        if reason is None and any(word in text for word in _TOO_LARGE_WORDS):
            reason = TOO_LARGE
        if reason is not None:
            return reason
        writing = writing or isinstance(chain, OSError) or type(chain).__module__.split(".")[0] in _WRITING_LIBRARIES
        chain = chain.__cause__ or chain.__context__
    if not writing:  # a bug stays a bug, however full the disk
        return None
    if work is not None and _file_at_size_limit(Path(work)):
        return TOO_LARGE
    place = Path(folder)
    while not place.exists() and place != place.parent:
        place = place.parent
    try:
        free = shutil.disk_usage(place).free
    except OSError:
        return None
    return f"the disk is full ({free // 1024} KB free)" if free < 1 << 20 else None


def failure_line(folder, reason: str) -> str:
    """The CLI's line for outputs that could not be written into `folder` because of `reason`."""
    if "read-only" in reason:
        fix = "choose another output folder"
    elif reason == TOO_LARGE:
        fix = "choose an output folder on another drive (NTFS, exFAT, ext4, APFS) or raise the limit"
    else:
        fix = "free some space or choose another output folder"
    return f"cannot write the outputs in {folder}: {reason}; {fix}"


def _file_at_size_limit(work) -> bool:
    """Whether a file in the work folder stopped growing at a size limit: FAT32's largest file, or the
    process's file-size limit (RLIMIT_FSIZE, where the system has one)."""
    limit = None
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        limit = None if soft == resource.RLIM_INFINITY else soft
    except ImportError:  # (Windows)
        pass
    try:
        sizes = [p.stat().st_size for p in work.rglob("*") if p.is_file()]
    except OSError:
        return False
    return any(size == FAT32_LARGEST_FILE or (limit is not None and size >= limit) for size in sizes)
