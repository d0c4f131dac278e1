"""Synthetic aerial-like scenes with exact labels, for tests and benchmarks.

A scene is laid out from global pixel coordinates, so any window of an arbitrarily large raster can
be generated on its own (and a 16k × 16k GeoTIFF written block by block in bounded memory):
water in the west, grass elsewhere, horizontal roads at a fixed spacing, square red roofs on a
grid in the grass. Pixel colours get Gaussian texture.

Labels: 0 water, 1 grass, 2 roof, 3 road.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

LABELS = ("water", "grass", "roof", "road")
COLOURS = np.array([(40, 80, 170), (90, 160, 60), (190, 60, 50), (128, 128, 128)], dtype=np.float32)


def scene_labels(height: int, width: int, rows: slice | None = None, cols: slice | None = None,
                 road_spacing: int | None = None, roof: int | None = None) -> np.ndarray:
    """Labels of the window (rows, cols) of a height × width scene."""
    rows = rows or slice(0, height)
    cols = cols or slice(0, width)
    y = np.arange(rows.start, rows.stop)[:, None]
    x = np.arange(cols.start, cols.stop)[None, :]
    road_spacing = road_spacing or max(32, height)
    half_road = max(2, min(height, road_spacing) // 16)
    roof = roof or max(8, min(height, width, road_spacing) // 4)
    labels = np.ones((len(y), x.shape[1]), dtype=np.uint8)
    west = x < width * 2 // 5
    road_centre = (y % road_spacing) - road_spacing // 2
    road = (np.abs(road_centre) < half_road) & ~west
    period = roof * 3 // 2
    band = (y % road_spacing) - road_spacing // 16
    roof_rows = ((band >= 0) & (band < roof)) | ((band - road_spacing // 2 - half_road >= 0)
                                                  & (band - road_spacing // 2 - half_road < roof))
    roof_cols = ((x - width // 2) >= 0) & (((x - width // 2) % period) < roof)
    labels = np.where(west, 0, labels)
    labels = np.where(roof_rows & roof_cols & ~west & ~road, 2, labels)
    labels = np.where(road, 3, labels)
    return labels.astype(np.uint8)


def render(labels: np.ndarray, seed: int = 0, noise: float = 12.0) -> np.ndarray:
    """RGB uint8 [3, h, w] for a label window."""
    rng = np.random.default_rng(seed)
    rgb = COLOURS[labels].transpose(2, 0, 1)
    rgb = rgb + rng.normal(0, noise, rgb.shape).astype(np.float32)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def scene(height: int, width: int, seed: int = 0, **layout) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 [3, H, W], labels [H, W]) of a whole scene."""
    labels = scene_labels(height, width, **layout)
    return render(labels, seed), labels


def write_scene_geotiff(path: str | Path, height: int, width: int, res: float = 0.5, crs: str = "EPSG:32633",
                        origin: tuple[float, float] = (500000.0, 5200000.0), block: int = 2048, seed: int = 0,
                        **layout) -> Path:
    """Write a large scene as a tiled GeoTIFF, block by block (memory independent of the size)."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    profile = dict(driver="GTiff", height=height, width=width, count=3, dtype="uint8", crs=crs,
                   transform=from_origin(origin[0], origin[1], res, res), tiled=True, blockxsize=512,
                   blockysize=512, compress="deflate", BIGTIFF="IF_SAFER", photometric="RGB")
    with rasterio.open(path, "w", **profile) as dst:
        for y in range(0, height, block):
            for x in range(0, width, block):
                rows, cols = slice(y, min(y + block, height)), slice(x, min(x + block, width))
                labels = scene_labels(height, width, rows, cols, **layout)
                dst.write(render(labels, seed + y * 7919 + x), window=Window(x, y, cols.stop - x, rows.stop - y))
    return Path(path)
