"""Vector layers with pyogrio: writing results (GeoPackage), the one place features reach disk, and
reading labelled polygons (teaching classes, checking accuracy)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import shapely

from engine.errors import InputError, first_line

MAX_COORDINATE = 1e15  # far beyond any CRS's extent; larger values overflow when mapped to pixels or in GEOS


def refuse_far_coordinates(geoms, what: str) -> None:
    """An InputError when a geometry has a coordinate that is not a finite number within ±1e15 (GEOS
    overflows on ±1e300: a mask covering everything then covered nothing)."""
    coords = shapely.get_coordinates(np.asarray(geoms, dtype=object).ravel())
    if coords.size and not (np.isfinite(coords).all() and np.abs(coords).max() <= MAX_COORDINATE):
        raise InputError(f"{what} has a coordinate that is not a number within ±{MAX_COORDINATE:g}")


def write_features(path: Path, geoms, fields: dict[str, np.ndarray], crs, layer: str,
                   append: bool = False) -> None:
    """Write (or append) polygons (a list or array) with attribute columns to a GeoPackage layer
    (MultiPolygon: GDAL makes each polygon a multipolygon of one part)."""
    geoms = np.asarray(geoms, dtype=object)
    if shapely.has_z(geoms).any():
        geoms = shapely.force_2d(geoms)
    write_wkb(path, np.asarray(shapely.to_wkb(geoms), dtype=object), fields, crs, layer, append)


def write_wkb(path: Path, wkb: np.ndarray, fields: dict[str, np.ndarray], crs, layer: str,
              append: bool = False) -> None:
    """`write_features` of 2D polygons already encoded as WKB (an object array of bytes). A field given as a
    numpy masked array is NULL where masked (an integer field has no NaN)."""
    from pyogrio.raw import write

    values = [np.ma.getdata(v) for v in fields.values()]
    masks = [np.ma.getmaskarray(v) if np.ma.isMaskedArray(v) else None for v in fields.values()]
    with warnings.catch_warnings():  # no CRS (pixel space) is meant, not forgotten: no "'crs' was not provided"
        warnings.filterwarnings("ignore", message=".*'crs' was not provided.*")
        write(str(path), wkb, values, list(fields.keys()), layer=layer, driver="GPKG",
              field_mask=masks if any(m is not None for m in masks) else None,
              geometry_type="MultiPolygon", crs=crs.to_wkt() if crs else None, append=append, promote_to_multi=True)


def read_labels(path: str, field: str) -> tuple[list, list[str], str | None]:
    """(geometries, label per geometry, CRS or None) of a vector file — of its layer holding `field` (a
    GeoPackage of several layers: the first that has it)."""
    from pyogrio import list_layers, read_info
    from pyogrio.raw import read

    try:
        layers = [str(name) for name, _ in list_layers(path)]
        chosen = next((layer for layer in layers if field in list(read_info(path, layer=layer)["fields"])),
                      layers[0] if layers else None)
        meta, _, wkb, columns = read(path, layer=chosen)
    except Exception as exc:  # noqa: BLE001 - pyogrio raises many kinds for unreadable files
        raise InputError(f"cannot read labels from {path}: {first_line(exc)}") from None
    names = list(meta.get("fields", []))
    if field not in names:
        others = f"; none of its layers ({', '.join(layers)}) has it" if len(layers) > 1 else ""
        raise InputError(f"{path} has no field '{field}' (fields: {', '.join(map(str, names)) or 'none'}{others})")
    values = ["" if v is None else str(v).strip() for v in columns[names.index(field)]]
    geoms = list(shapely.from_wkb(wkb))
    if not geoms:
        raise InputError(f"{path} holds no features")
    refuse_far_coordinates(geoms, str(path))
    return geoms, values, meta.get("crs")
