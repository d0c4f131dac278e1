"""Synthetic geo-referenced test rasters: structured aerial-like scenes written as GeoTIFFs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

# Region colours of the synthetic scene (RGB), with texture added on top.
WATER = (40, 80, 170)
GRASS = (90, 160, 60)
ROOF = (190, 60, 50)
ROAD = (128, 128, 128)


def scene(height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An RGB uint8 scene [3, H, W] and its label map: water west, grass east, a road across,
    red roofs in the grass. Labels: 0 water, 1 grass, 2 roof, 3 road."""
    rng = np.random.default_rng(seed)
    labels = np.ones((height, width), dtype=np.uint8)
    labels[:, : width * 2 // 5] = 0
    road_y = height // 2
    half_road = max(2, height // 16)
    labels[road_y - half_road: road_y + half_road, width * 2 // 5:] = 3
    roof = max(8, min(height, width) // 4)
    for k in range(max(1, width // (2 * roof))):
        y0 = height // 16 + (k % 2) * (height // 2 + half_road)
        x0 = width // 2 + k * (roof * 3 // 2)
        labels[y0: y0 + roof, x0: x0 + roof] = 2
    colours = np.array([WATER, GRASS, ROOF, ROAD], dtype=np.float32)
    rgb = colours[labels].transpose(2, 0, 1)
    rgb += rng.normal(0, 12, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8), labels


def write_raster(path: Path, data: np.ndarray, crs: str | None = "EPSG:32633", origin=(500000.0, 5200000.0),
                 res: float = 0.5, nodata=None, colorinterp=None) -> Path:
    count, height, width = data.shape
    profile = dict(driver="GTiff", height=height, width=width, count=count, dtype=data.dtype.name,
                   transform=from_origin(origin[0], origin[1], res, res), nodata=nodata)
    if crs is not None:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if colorinterp is not None:
            dst.colorinterp = colorinterp
    return path
