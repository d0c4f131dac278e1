"""Reading the text files users write by hand — class lists (`--classes @file.txt`), lists of rasters
— as UTF-8, with or without the byte-order mark Windows editors put first; any other encoding is one
clear error naming the file, not a traceback."""

from __future__ import annotations

from pathlib import Path

from engine.errors import InputError


def read_text_file(path: str | Path, what: str) -> str:
    """The file's text; `what` names it in errors ("class file", "list of rasters")."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{what} {path} is not UTF-8 text (byte {exc.start + 1} is 0x{data[exc.start]:02x}): "
                         f"save it as UTF-8") from None
