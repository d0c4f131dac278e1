"""Rows of the CSV/TSV files people make by hand for training and evaluation (captions, image lists):
each row a dict of the header's columns with the line it starts on, and one clear error for what the
csv module would otherwise read silently wrong — a double quote never closed (every later row swallowed
into one field) or a row with more fields than the header (a caption cut at an unquoted comma)."""

from __future__ import annotations

import csv
import io

from engine.errors import InputError


def csv_table(text: str, name: str, tab: bool = False) -> tuple[list[str], list[tuple[int, dict]]]:
    """(the header's columns, (line the row starts on, {column: value}) for each row under it) of `text`
    (comma- or, with `tab`, tab-separated), `name` naming the file in errors."""
    reader = csv.DictReader(io.StringIO(text, newline=""), dialect="excel-tab" if tab else "excel", strict=True)
    separator = "tab" if tab else "comma"
    rows, start, header = [], 1, []
    try:
        header = list(reader.fieldnames or [])  # (the header's own quotes are checked too)
        start = reader.line_num + 1
        for row in reader:
            if None in row:
                raise InputError(f"{name} line {start}: more fields than the header has (a value holding a "
                                 f"{separator} must be in double quotes: \"red roofs, grey road\")")
            rows.append((start, row))
            start = reader.line_num + 1
    except csv.Error as exc:
        if "unexpected end of data" in str(exc):
            raise InputError(f"{name} line {start}: a double quote opened on this line is never closed (every "
                             f"line after it would be read as part of one value)") from None
        raise InputError(f"{name} line {start}: {exc} (a double quote inside a quoted value is written twice: "
                         f"\"\")") from None
    return header, rows
