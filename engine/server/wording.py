"""The engine's messages as an HTTP client reads them. They are written for the command line and name
its flags ("pass --bands (e.g. --bands 1,1,1 …)"); a client sends JSON fields, so the flags that are
fields of a request are named as fields ("pass \"bands\" (e.g. \"bands\": [1, 1, 1] …)"). Flags of the
server itself (`--device`, `--allow-root`) stay as they are: they are its operator's to change."""

from __future__ import annotations

import re

FIELDS = {"bands": "bands", "gsd": "gsd", "classes": "classes", "cell": "cell_m", "cell-px": "cell_px",
          "simplify": "simplify", "min-area": "min_area", "arch": "arch", "bbox": "bbox", "bbox-crs": "bbox_crs",
          "window": "window", "nodata": "nodata", "threshold": "threshold", "background": "background",
          "scores": "scores", "upsampler": "upsampler", "regions": "regions", "preset": "preset",
          "model": "model", "query": "query", "top-k": "top_k"}
_NUMBER = r"-?[0-9][0-9.]*(?:e[-+]?[0-9]+)?"
_FLAG = re.compile(rf"--([a-z][a-z0-9-]*)(?: ({_NUMBER}(?:,{_NUMBER})*))?")


def for_clients(message: str) -> str:
    """`message` with the request's flags named as its JSON fields (with a value: `"gsd": 0.5`, a list
    of numbers as a JSON array)."""
    def field(match: re.Match) -> str:
        name = FIELDS.get(match[1])
        if name is None:
            return match[0]
        if match[2] is None:
            return f'"{name}"'
        return f'"{name}": [{match[2].replace(",", ", ")}]' if "," in match[2] else f'"{name}": {match[2]}'

    return _FLAG.sub(field, message)
