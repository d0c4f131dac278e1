"""Scene captions for MGRS-style records.

The default `TemplateCaptioner` writes honest captions from what the annotations say and what the
pixels plainly show: object counts by category, where they lie in the image (a 3 × 3 grid of
positions), and the dominant cover judged by colour alone (green vegetation, water-blue, or grey/bare
ground, named only when it covers more than half the image), in a short and a long form. A multimodal LLM can be plugged in instead: any callable
`(image: PIL.Image, objects: list[dict]) -> {"brief_caption": str, "detailed_caption": str}`,
named on the command line as `module:function` (`--captioner`).
"""

from __future__ import annotations

import importlib
from collections import Counter
from typing import Callable

from engine.errors import InputError

Captioner = Callable[[object, list[dict]], dict]


IRREGULAR = {"person": "people", "man": "men", "woman": "women", "child": "children", "bus": "buses",
             "leaf": "leaves", "foot": "feet", "mouse": "mice"}
UNCHANGED = {"aircraft", "sheep", "fish", "series", "species", "equipment", "grass", "water", "farmland",
             "vegetation", "debris", "cattle", "barren", "bareland", "cropland", "rangeland"}
SINGULAR = {v: k for k, v in IRREGULAR.items()}


def _singular(word: str) -> str:
    """The singular of a category's last word ("trees" → "tree", "ferries" → "ferry")."""
    if word in SINGULAR or word in UNCHANGED:
        return SINGULAR.get(word, word)
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("sses", "shes", "ches", "xes", "zes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")) and len(word) > 3:
        return word[:-1]
    return word


def _plural_word(word: str) -> str:
    if word in IRREGULAR or word in UNCHANGED:
        return IRREGULAR.get(word, word)
    if word.endswith("y") and len(word) > 1 and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    if word.endswith(("s", "sh", "ch", "x", "z")):
        return word + "es"
    return word + "s"


def _plural(category: str, n: int) -> str:
    """A category name inflected for a count: its last word singular for 1, plural otherwise, whether
    the dataset named it in the singular or the plural ("one tree", "two solar panels")."""
    words = category.split()
    if not words:
        return category
    last = _singular(words[-1])
    words[-1] = last if n == 1 else _plural_word(last)
    return " ".join(words)


def _count_phrase(category: str, n: int) -> str:
    words = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine"}
    return f"{words.get(n, str(n))} {_plural(category, n)}"


def _position(obj: dict, width: int, height: int) -> str:
    b = obj["bbox"]
    cx, cy = (b["x1"] + b["x2"]) / 2 / max(width, 1), (b["y1"] + b["y2"]) / 2 / max(height, 1)
    row = "top" if cy < 1 / 3 else "bottom" if cy > 2 / 3 else "middle"
    col = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else "centre"
    return "centre" if (row, col) == ("middle", "centre") else f"{row} {col}" if row != "middle" else col


def dominant_cover(image) -> str | None:
    """'green vegetation', 'water' or 'grey or bare ground' when one covers over half the pixels (by colour)."""
    import numpy as np

    rgb = np.asarray(image.convert("RGB").resize((64, 64)), dtype=np.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    green = (g > r + 8) & (g > b + 8)
    water = (b > r + 15) & (b >= g) & (rgb.mean(-1) < 160)
    grey = ~green & ~water & (np.abs(r - g) < 25) & (np.abs(g - b) < 25)
    shares = {"green vegetation": green.mean(), "water": water.mean(), "grey or bare ground": grey.mean()}
    name, share = max(shares.items(), key=lambda kv: kv[1])
    return name if share > 0.5 else None


class TemplateCaptioner:
    def __call__(self, image, objects: list[dict]) -> dict:
        width, height = image.size
        counts = Counter(o["category"] for o in objects)
        cover = dominant_cover(image)
        if not counts:
            brief = "a satellite image with no annotated objects"
            return {"brief_caption": brief + (f", mostly {cover}" if cover else ""),
                    "detailed_caption": "A satellite image; no objects are annotated in it."
                                        + (f" Most of it is {cover}." if cover else "")}
        parts = [_count_phrase(c, n) for c, n in counts.most_common()]
        listing = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        brief = f"a satellite image with {listing}"
        sentences = [f"A satellite image showing {listing}."]
        for category, n in counts.most_common():
            places = Counter(_position(o, width, height) for o in objects if o["category"] == category)
            where = ", ".join(f"{k}" if v == 1 else f"{k} ({v})" for k, v in places.most_common(3))
            sentences.append(f"The {_plural(category, n)} {'is' if n == 1 else 'are'} in the {where} of the image.")
        if cover:
            sentences.append(f"Most of the image is {cover}.")
        return {"brief_caption": brief, "detailed_caption": " ".join(sentences)}


def load_captioner(spec: str | None) -> Captioner:
    if not spec:
        return TemplateCaptioner()
    module, _, name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise InputError(f"cannot load captioner '{spec}' (module:function)") from None
    if not callable(fn):
        raise InputError(f"captioner '{spec}' is not callable")
    return fn
