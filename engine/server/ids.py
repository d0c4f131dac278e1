"""Job and upload ids: what they look like, made and checked in this one place.

An id is 32 lowercase hex digits (a random UUID's hex). Every id a client sends is checked with
`is_id` before anything is looked up or any path is built from it, so `..`, `.` or a name with a
slash can never become a folder the engine removes or serves.
"""

from __future__ import annotations

import re
import uuid

PATTERN = r"^[0-9a-f]{32}$"
_ID = re.compile(r"[0-9a-f]{32}")
SHOWN = 64  # characters of a client's id quoted back in a message


def new_id() -> str:
    return uuid.uuid4().hex


def is_id(text: object) -> bool:
    return isinstance(text, str) and _ID.fullmatch(text) is not None


def shown(text: str) -> str:
    """A client's id as a message quotes it: cut short, one line."""
    text = text[:SHOWN]
    return text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text
