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
    """The outputs could not be written where asked: a full disk, a read-only folder, a file-size limit."""


_FULL_WORDS = ("no space left", "disk is full", "disk full", "quota exceeded", "read-only file system")
_TOO_LARGE_WORDS = ("file too large",)


def output_failure(exc: BaseException, folder, work=None) -> str | None:
    """One line for an error writing outputs into `folder` that is the disk's, not the input's: no space left
    or a quota reached (an OSError's errno, or GDAL's, SQLite's or libtiff's words for it, or the disk
    holding `folder` with next to no room left), a read-only file system, a file grown to the largest size
    allowed (EFBIG: 4 GB on a FAT32 drive, or the process's `ulimit -f`). None for any other error.
    `work`: the run's work folder, still holding its partial outputs (libtiff only prints what failed, so
    a file there at the process's file-size limit is how that limit shows, and the space they take is how
    a full disk shows: once removed, the disk has room again)."""
    import errno
    import shutil
    from pathlib import Path

    if folder is None:
        return None
    place = Path(folder)
    too_large = ("a file reached the largest size allowed there (4 GB a file on a FAT32 drive, or this process's "
                 "file-size limit, ulimit -f)")
    reasons = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is reached",
               errno.EROFS: "the file system is read-only", errno.EFBIG: too_large}
    chain, seen = exc, set()
    while chain is not None and id(chain) not in seen:
        seen.add(id(chain))
        reason = reasons.get(getattr(chain, "errno", None)) if isinstance(chain, OSError) else None
        text = str(chain).lower()
        if reason is None and any(word in text for word in _FULL_WORDS):
            reason = "the disk is full" if "read-only" not in text else "the file system is read-only"
        if reason is None and any(word in text for word in _TOO_LARGE_WORDS):
            reason = too_large
        if reason is not None:
            return _failure_line(place, reason)
        chain = chain.__cause__ or chain.__context__
    if work is not None and _file_at_size_limit(Path(work)):
        return _failure_line(place, too_large)
    while not place.exists() and place != place.parent:
        place = place.parent
    try:
        free = shutil.disk_usage(place).free
    except OSError:
        return None
    if free < 1 << 20:
        return (f"cannot write the outputs in {folder}: the disk is full ({free // 1024} KB free); free some space "
                f"or choose another output folder")
    return None


def _failure_line(folder, reason: str) -> str:
    if "read-only" in reason:
        fix = "choose another output folder"
    elif "largest size" in reason:
        fix = "choose an output folder on another drive (NTFS, exFAT, ext4, APFS) or raise the limit"
    else:
        fix = "free some space or choose another output folder"
    return f"cannot write the outputs in {folder}: {reason}; {fix}"


def _file_at_size_limit(work) -> bool:
    """Whether a file in the work folder has grown to the process's file-size limit (RLIMIT_FSIZE, where
    the system has one), past which no write goes."""
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    except ImportError:  # (Windows)
        return False
    if limit == resource.RLIM_INFINITY:
        return False
    try:
        return any(p.stat().st_size >= limit for p in work.rglob("*") if p.is_file())
    except OSError:
        return False
