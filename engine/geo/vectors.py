"""Writing vector layers (GeoPackage) with pyogrio: the one place features reach disk."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import shapely


def write_features(path: Path, geoms: list, fields: dict[str, np.ndarray], crs, layer: str,
                   append: bool = False) -> None:
    """Write (or append) polygons with attribute columns to a GeoPackage layer (MultiPolygon)."""
    from pyogrio.raw import write

    geoms = [shapely.force_2d(g) for g in geoms]
    geoms = [shapely.MultiPolygon([g]) if g.geom_type == "Polygon" else g for g in geoms]
    with warnings.catch_warnings():  # no CRS (pixel space) is meant, not forgotten: no "'crs' was not provided"
        warnings.filterwarnings("ignore", message=".*'crs' was not provided.*")
        write(str(path), np.array(shapely.to_wkb(geoms), dtype=object) if geoms else np.array([], dtype=object),
              list(fields.values()), list(fields.keys()), layer=layer, driver="GPKG", geometry_type="MultiPolygon",
              crs=crs.to_wkt() if crs else None, append=append)
