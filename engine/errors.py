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


_FULL_WORDS = ("no space left", "disk is full", "disk full", "quota exceeded", "read-only file system")


def output_failure(exc: BaseException, folder) -> str | None:
    """One line for an error writing outputs into `folder` that is the disk's, not the input's: no space left
    or a quota reached (an OSError's errno, or GDAL's, SQLite's or libtiff's words for it, or the disk
    holding `folder` with next to no room left), a read-only file system. None for any other error."""
    import errno
    import shutil
    from pathlib import Path

    if folder is None:
        return None
    place = Path(folder)
    reasons = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is reached",
               errno.EROFS: "the file system is read-only"}
    chain, seen = exc, set()
    while chain is not None and id(chain) not in seen:
        seen.add(id(chain))
        reason = reasons.get(getattr(chain, "errno", None)) if isinstance(chain, OSError) else None
        text = str(chain).lower()
        if reason is None and any(word in text for word in _FULL_WORDS):
            reason = "the disk is full" if "read-only" not in text else "the file system is read-only"
        if reason is not None:
            fix = "choose another output folder" if "read-only" in reason else \
                "free some space or choose another output folder"
            return f"cannot write the outputs in {place}: {reason}; {fix}"
        chain = chain.__cause__ or chain.__context__
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
