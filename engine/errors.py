"""Errors the engine raises for problems a user can fix.

Every error here carries one readable line: the CLI prints it and exits non-zero, the HTTP API
turns it into a 4xx answer. Anything else that escapes is a bug.
"""


class FarSLIPError(Exception):
    """A problem with the user's input or set-up, described in one line."""


class InputError(FarSLIPError, ValueError):
    """Bad input data or arguments: an image, a class list, an option."""


class ModelError(FarSLIPError):
    """A model could not be found, downloaded or loaded."""


class Cancelled(FarSLIPError):
    """A run was cancelled; nothing was written."""
