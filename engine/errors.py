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
