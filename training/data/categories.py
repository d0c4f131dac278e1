"""Category names from many datasets, normalised to one vocabulary through an editable synonym table.

Normalisation: lower case, '-' and '_' to spaces, spaces collapsed; then the synonym table maps
variants to one name ("small-vehicle", "vehicle" → "car"). A user's JSON file ({"variant": "name"})
extends or overrides the defaults.
"""

from __future__ import annotations

import json
from pathlib import Path

from engine.errors import InputError

DEFAULT_SYNONYMS = {
    "small vehicle": "car", "vehicle": "car", "large vehicle": "truck",
    "plane": "airplane", "aeroplane": "airplane",
    "storage tank": "storage tank", "storagetank": "storage tank", "store tank": "storage tank",
    "ground track field": "ground track field", "groundtrackfield": "ground track field",
    "ground track": "ground track field",
    "soccer ball field": "soccer field", "baseball diamond": "baseball field", "baseballfield": "baseball field",
    "basketball court": "basketball court", "basketballcourt": "basketball court",
    "tennis court": "tennis court", "tenniscourt": "tennis court",
    "harbor": "harbor", "harbour": "harbor", "ship": "ship", "boat": "ship",
    "expressway service area": "service area", "expressway toll station": "toll station",
    "expressway-service-area": "service area", "expressway-toll-station": "toll station",
    "golffield": "golf course", "golf field": "golf course", "trainstation": "train station",
    "swimming pool": "swimming pool", "roundabout": "roundabout", "bridge": "bridge", "dam": "dam",
    "windmill": "wind turbine", "chimney": "chimney", "overpass": "overpass", "stadium": "stadium",
    "airport": "airport", "helicopter": "helicopter", "container crane": "container crane",
}


def normalise(name: str) -> str:
    return " ".join(name.replace("-", " ").replace("_", " ").lower().split())


class CategoryTable:
    def __init__(self, extra: dict[str, str] | None = None):
        self.table = {normalise(k): normalise(v) for k, v in {**DEFAULT_SYNONYMS, **(extra or {})}.items()}

    @classmethod
    def from_file(cls, path: str | Path | None) -> "CategoryTable":
        if path is None:
            return cls()
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read the synonym table {path}: {exc}") from None
        if not isinstance(data, dict):
            raise InputError(f"{path}: the synonym table is a JSON object {{\"variant\": \"name\"}}")
        return cls({str(k): str(v) for k, v in data.items()})

    def __call__(self, name: str) -> str:
        key = normalise(name)
        return self.table.get(key, key)
