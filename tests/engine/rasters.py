"""Synthetic geo-referenced test rasters (scenes from training.data.synthetic) written as GeoTIFFs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

from training.data.synthetic import scene  # noqa: F401  (re-exported for the tests)


def write_raster(path: Path, data: np.ndarray, crs: str | None = "EPSG:32633", origin=(500000.0, 5200000.0),
                 res: float = 0.5, nodata=None, colorinterp=None, transform=None, tiled: bool = False) -> Path:
    """A GeoTIFF of `data` [bands, h, w]: north-up at `origin`/`res`, or on any `transform` (rotated, south-up);
    in strips, or in 256 px tiles when `tiled`."""
    count, height, width = data.shape
    profile = dict(driver="GTiff", height=height, width=width, count=count, dtype=data.dtype.name,
                   transform=transform or from_origin(origin[0], origin[1], res, res), nodata=nodata)
    if crs is not None:
        profile["crs"] = crs
    if tiled:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if colorinterp is not None:
            dst.colorinterp = colorinterp
    return path


def palette_of(rgb: np.ndarray, levels: int = 6) -> tuple[np.ndarray, dict[int, tuple[int, int, int, int]]]:
    """An RGB image [3, h, w] uint8 quantised to `levels`³ colours: (palette indices [h, w] uint8, colour
    table {index: (r, g, b, 255)}); the table's colours of the indices are the quantised image."""
    steps = np.minimum(rgb.astype(np.int64) * levels // 256, levels - 1)
    indices = (steps[0] * levels + steps[1]) * levels + steps[2]
    value = [round(255 * k / (levels - 1)) for k in range(levels)]
    table = {(r * levels + g) * levels + b: (value[r], value[g], value[b], 255)
             for r in range(levels) for g in range(levels) for b in range(levels)}
    return indices.astype(np.uint8), table


def write_palette_raster(path: Path, indices: np.ndarray, table: dict, nodata=None, **grid) -> Path:
    """A one-band GeoTIFF of palette `indices` [h, w] with colour table `table` (colour interpretation
    palette), on `write_raster`'s grid (`crs`, `origin`, `res`)."""
    write_raster(path, indices[None].astype(np.uint8), nodata=nodata, **grid)
    with rasterio.open(path, "r+") as ds:
        ds.write_colormap(1, table)
    return path


def write_gcp_raster(path: Path, data: np.ndarray, gcps=None, crs: str = "EPSG:32633", rpcs=None) -> Path:
    """A GeoTIFF of `data` [bands, h, w] georeferenced by ground control points (`gcps`) or RPCs
    (`rpcs`, a rasterio RPC) only: no geotransform."""
    import warnings

    from rasterio.crs import CRS
    from rasterio.errors import NotGeoreferencedWarning

    count, height, width = data.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver="GTiff", height=height, width=width, count=count,
                           dtype=data.dtype.name) as dst:
            dst.write(data)
            if gcps:
                dst.gcps = (list(gcps), CRS.from_user_input(crs))
            if rpcs is not None:
                dst.rpcs = rpcs
    return path


def write_geopackage(path: Path, data: np.ndarray, table: str = "ortho", append: bool = False,
                     crs: str = "EPSG:32633", origin=(500000.0, 5200000.0), res: float = 0.5) -> Path:
    """A GeoPackage with `data` [3, h, w] uint8 in raster table `table`; `append`: added to an existing
    GeoPackage (two tables or more: a container of GDAL subdatasets `GPKG:<path>:<table>`)."""
    count, height, width = data.shape
    with rasterio.open(path, "w", driver="GPKG", height=height, width=width, count=count, dtype="uint8", crs=crs,
                       transform=from_origin(origin[0], origin[1], res, res), RASTER_TABLE=table,
                       **({"APPEND_SUBDATASET": "YES"} if append else {})) as dst:
        dst.write(data)
    return path
