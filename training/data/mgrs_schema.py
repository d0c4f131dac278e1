"""The schema of an MGRS `text_info.json` record, checked once when stage 2 reads the file, so that a
malformed record is refused in one line naming the record and the field, before anything trains:

    {"global_filepath": "P0001_0.jpg",                       image path under the image folder
     "global_caption" | "detailed_caption" | "brief_caption": "...",     the scene caption (first found)
     "segment": [{"bbox": {"x1", "y1", "x2", "y2"[, "W", "H"]},          pixels; W/H: the image's size
                  "category": "airplane", "category_id": 3}              an object of a category
                 | {"bbox": {...}, "cap": "a white plane on the apron"}]}  an object with its own caption

An object with its own caption (`cap`) needs no category: the published code reads only `cap` for it
(and labels it −1); every other object needs `category` and `category_id`. `segment` may be absent
(an image without objects).
"""

from __future__ import annotations

import math

from engine.errors import InputError

CAPTION_KEYS = ("global_caption", "detailed_caption", "brief_caption")
BOX_KEYS = ("x1", "y1", "x2", "y2")


def _kind(value) -> str:
    return {dict: "an object", list: "a list", str: "text", type(None): "null"}.get(type(value), type(value).__name__)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def caption_of(record: dict, caption_key: str = "global_caption") -> str:
    """The scene caption: `caption_key`, else the detailed, else the brief caption ('' when none)."""
    for key in (caption_key, *CAPTION_KEYS[1:]):
        value = record.get(key)
        if isinstance(value, str) and value.strip():
            return value
    return ""


def own_caption(segment: dict) -> str | None:
    """An object's own caption (`cap`), or None for an object described by its category."""
    cap = segment.get("cap")
    return cap if isinstance(cap, str) and cap.strip() else None


def _segment_problem(segment) -> str | None:
    if not isinstance(segment, dict):
        return f"is {_kind(segment)}, not an object"
    box = segment.get("bbox")
    if not isinstance(box, dict):
        found = "no 'bbox'" if box is None else f"'bbox' is {_kind(box)}"
        return f"{found}; expected an object {{x1, y1, x2, y2[, W, H]}} in pixels"
    for key in BOX_KEYS:
        if not _number(box.get(key)):
            return f"'bbox' has no number '{key}'" if key not in box else f"'bbox' '{key}' is not a finite number"
    for key in ("W", "H"):
        if key in box and not (_number(box[key]) and box[key] > 0):
            return f"'bbox' '{key}' (the image size) is not a positive number"
    if "cap" in segment and not isinstance(segment["cap"], str):
        return f"'cap' is {_kind(segment['cap'])}, not text"
    if own_caption(segment) is not None:
        return None
    category = segment.get("category")
    if not isinstance(category, str) or not category.strip():
        return "'category' missing or not text (an object without its own caption 'cap' needs 'category' " \
               "and 'category_id')"
    category_id = segment.get("category_id")
    if not isinstance(category_id, int) or isinstance(category_id, bool):
        return "'category_id' missing or not an integer (an object without its own caption 'cap' needs " \
               "'category' and 'category_id')"
    return None


def record_problem(record, caption_key: str = "global_caption") -> str | None:
    """What is wrong with one record (None: nothing)."""
    if not isinstance(record, dict):
        return f"is {_kind(record)}, not an object"
    path = record.get("global_filepath")
    if not isinstance(path, str) or not path.strip():
        return "'global_filepath' missing or not text"
    if not caption_of(record, caption_key):
        return f"no caption (one of '{caption_key}', {', '.join(repr(k) for k in CAPTION_KEYS[1:])})"
    segments = record.get("segment")
    if segments is None:
        return None
    if not isinstance(segments, list):
        return f"'segment' is {_kind(segments)}, not a list of objects"
    for j, segment in enumerate(segments):
        problem = _segment_problem(segment)
        if problem:
            return f"segment {j}: {problem}"
    return None


def check_records(records, name: str, caption_key: str = "global_caption") -> None:
    """Raise InputError for the first malformed record ('text_info.json: record 12: segment 0: …')."""
    if not isinstance(records, list):
        raise InputError(f"{name}: expected a list of records, found {_kind(records)}")
    for i, record in enumerate(records):
        problem = record_problem(record, caption_key)
        if problem:
            raise InputError(f"{name}: record {i}: {problem}")


def category_warnings(records: list[dict], name: str) -> list[str]:
    """What the region–category loss would learn wrongly from checked records, without refusing them
    (the published code trains on them as they are): a `category_id` naming several categories (their
    objects taught as one class), a category under several ids (its objects pushed apart from their own
    text), a category object with id −1 (left out like an object with its own caption)."""
    names: dict[int, dict[str, int]] = {}
    for record in records:
        for segment in record.get("segment") or []:
            if own_caption(segment) is None:
                named = names.setdefault(segment["category_id"], {})
                category = " ".join(segment["category"].split()).lower()  # (the text as the tokenizer reads it)
                named[category] = named.get(category, 0) + 1
    found = []
    for category_id, named in sorted(names.items()):
        if len(named) > 1:
            shown = ", ".join(f"'{c}' ×{n}" for c, n in sorted(named.items(), key=lambda item: -item[1])[:4])
            more = ", ..." if len(named) > 4 else ""
            found.append(f"{name}: category_id {category_id} names {len(named)} categories ({shown}{more}): they "
                         f"are trained as one class")
    ids: dict[str, list[int]] = {}
    for category_id, named in names.items():
        for category in named if category_id != -1 else ():  # (those are left out: no class at all)
            ids.setdefault(category, []).append(category_id)
    for category, several in sorted(ids.items()):
        if len(several) > 1:
            shown = ", ".join(map(str, sorted(several)[:6])) + (", ..." if len(several) > 6 else "")
            found.append(f"{name}: category '{category}' has {len(several)} ids ({shown}): its objects are taught "
                         f"as that many classes, each pushed away from the others' (same) text")
    if -1 in names:
        found.append(f"{name}: objects of a category with category_id -1: {sum(names[-1].values())}; the published "
                     f"rule leaves them out (as objects with their own caption)")
    if len(found) > 6:
        found = [*found[:5], f"{name}: and {len(found) - 5} more such problems"]
    return found
