"""Saved prompt sets: a few built-ins and the user's own (QgsSettings), imported and exported as text."""

from __future__ import annotations

import json

from qgis.core import QgsSettings

KEY = "farslip/prompt_sets"

BUILT_IN: dict[str, str] = {
    "Urban land cover": "building, roof\nroad, street\ntree, forest\ngrass, lawn\nwater, river\nbare soil",
    "Land use": "residential area\nindustrial area\ncommercial area\nfarmland\nforest\nwater\nroad",
    "LoveDA-style": "background\nbuilding, roof, house\nroad\nwater\nbarren\nforest\nagricultural",
    "iSAID objects": ("background\nship\nstorage tank\nbaseball diamond\ntennis court\nbasketball court\n"
                      "ground track field\nbridge\nlarge vehicle\nsmall vehicle\nhelicopter\nswimming pool\n"
                      "roundabout\nsoccer ball field\nplane\nharbor"),
}


def class_lines(text: str) -> list[str]:
    """One class per line (';' also separates classes); commas stay inside a line as synonyms."""
    return [part.strip() for line in text.splitlines() for part in line.split(";") if part.strip()]


def user_sets() -> dict[str, str]:
    raw = QgsSettings().value(KEY, "{}")
    try:
        sets = json.loads(raw) if isinstance(raw, str) else {}
    except ValueError:
        sets = {}
    return {str(k): str(v) for k, v in sets.items()} if isinstance(sets, dict) else {}


def all_sets() -> dict[str, str]:
    return {**BUILT_IN, **user_sets()}


def save_set(name: str, text: str) -> None:
    sets = user_sets()
    sets[name] = text
    QgsSettings().setValue(KEY, json.dumps(sets))


def delete_set(name: str) -> None:
    sets = user_sets()
    sets.pop(name, None)
    QgsSettings().setValue(KEY, json.dumps(sets))
