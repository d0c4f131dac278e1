"""Which three bands of a raster are its red, green and blue: `--bands`, or the bands' descriptions."""

from __future__ import annotations

import re

from engine.errors import InputError


def parse_bands(text: str | None) -> tuple[int, int, int] | None:
    if text is None:
        return None
    try:
        bands = tuple(int(b) for b in text.split(","))
    except ValueError:
        raise InputError(f"--bands takes three band numbers like 3,2,1, got '{text}'") from None
    if len(bands) != 3:
        raise InputError(f"--bands takes exactly three band numbers (red, green, blue), got '{text}'")
    return bands  # type: ignore[return-value]


_COLOUR_WORDS = {"red": 0, "green": 1, "blue": 2}


def bands_named_rgb(descriptions) -> tuple[int, int, int] | None:
    """The bands whose descriptions name red, green and blue as a word ("Red", "B4 red", "blue (B2)";
    never "red edge", "coastal blue" or "NIR"), one band each — where two name a colour, the one named
    by that word alone ("green" over "green_i") — or None when the descriptions do not say all three.
    (Stacks made from Sentinel-2 or Landsat bands and PlanetScope's products often describe their
    bands but set no colour interpretation.)"""
    found: dict[int, list[tuple[int, bool]]] = {0: [], 1: [], 2: []}
    for band, text in enumerate(descriptions or (), start=1):
        words = re.findall(r"[a-z]+", (text or "").lower())
        colours = {_COLOUR_WORDS[w] for w in words if w in _COLOUR_WORDS}
        if len(colours) == 1 and not {"edge", "rededge", "coastal", "nir", "infrared"} & set(words):
            found[colours.pop()].append((band, len(words) == 1))
    chosen = []
    for candidates in found.values():
        alone = [band for band, only in candidates if only]
        if len(candidates) == 1 or len(alone) == 1:
            chosen.append(candidates[0][0] if len(candidates) == 1 else alone[0])
        else:
            return None
    return chosen[0], chosen[1], chosen[2]
