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
