"""Stable colours per class: familiar colours for common land-cover words, else a hash of the name.

The same class list always gets the same colours, in every run and every output (colour table,
polygons' style, the plugin's legend), and within one list no two classes look alike (`class_colours`):
'building; house' or 'road; street' are two classes, so the second gets a colour of its own.
"""

from __future__ import annotations

import colorsys
import hashlib
import re

# First matching keyword wins; matched at the start of a word of each of the class's names ("cars",
# "rooftop", but not "scar", "township" or "airfield").
_KNOWN: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("background", (0, 0, 0)), ("clutter", (80, 80, 80)),
    ("building", (220, 40, 40)), ("roof", (220, 40, 40)), ("house", (220, 40, 40)), ("facade", (190, 90, 70)),
    ("road", (160, 160, 160)), ("street", (160, 160, 160)), ("pavement", (200, 200, 190)),
    ("impervious", (200, 200, 200)), ("parking", (120, 120, 130)),
    ("tree", (20, 110, 30)), ("forest", (20, 110, 30)), ("vegetation", (90, 180, 70)),
    ("grass", (150, 220, 100)), ("meadow", (150, 220, 100)),
    ("water", (30, 100, 220)), ("river", (30, 100, 220)), ("lake", (30, 100, 220)), ("sea", (20, 70, 180)),
    ("crop", (240, 210, 90)), ("agricultur", (240, 210, 90)), ("farm", (240, 210, 90)), ("field", (230, 200, 110)),
    ("bare", (180, 140, 90)), ("barren", (180, 140, 90)), ("soil", (170, 120, 80)), ("sand", (230, 210, 150)),
    ("car", (250, 150, 0)), ("vehicle", (250, 150, 0)), ("ship", (200, 0, 200)), ("plane", (0, 200, 200)),
)


def class_colour(names: "str | list[str] | tuple[str, ...]") -> tuple[int, int, int]:
    """RGB colour of a class given its name or its list of synonyms (alone: see `class_colours`)."""
    names = [names] if isinstance(names, str) else list(names)
    for name in names:
        lowered = name.lower()
        for keyword, colour in _KNOWN:
            if re.search(rf"(?<!\w){keyword}", lowered):
                return colour
    return _hashed(names[0], 0)


def class_colours(classes) -> list[tuple[int, int, int]]:
    """The colour of each class of a list (`ClassLine`s or lists of synonyms): `class_colour`, unless a
    class before it already has a colour close to it — then hues further round the colour wheel from
    its name's hash, until one is distinct."""
    given: list[tuple[int, int, int]] = []
    for c in classes:
        names = list(getattr(c, "names", c))
        colour = class_colour(names)
        turn = 0
        while any(_close(colour, other) for other in given) and turn < 64:
            turn += 1
            colour = _hashed(names[0], turn)
        given.append(colour)
    return given


_CLOSE = 75  # RGB distance under which two classes' colours are hard to tell apart on a map


def _close(a: tuple[int, int, int], b: tuple[int, int, int]) -> bool:
    return sum((x - y) ** 2 for x, y in zip(a, b)) < _CLOSE ** 2


def _hashed(name: str, turn: int) -> tuple[int, int, int]:
    """A colour from the name's hash; each `turn` moves its hue on by the golden ratio of a circle."""
    digest = hashlib.sha256(name.strip().lower().encode("utf-8")).digest()
    hue = (digest[0] / 255.0 + turn * 0.618034) % 1.0
    saturation = 0.55 + 0.4 * digest[1] / 255.0
    value = 0.65 + 0.3 * digest[2] / 255.0
    r, g, b = colorsys.hsv_to_rgb(hue, saturation, value)
    return int(r * 255), int(g * 255), int(b * 255)


def hex_colour(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)
