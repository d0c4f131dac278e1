"""Raster outputs: block-wise temporary GeoTIFFs, resampling to the source grid, COG files.

Products (uint8, nodata 255):
- classes:    class index per pixel, colour table, class names in the `FARSLIP_CLASSES` tag
- confidence: probability of the chosen class × 254
- scores:     one band per class, probability × 254 (band scale 1/254, so QGIS shows 0-1)
Finished files are Cloud-Optimised GeoTIFFs (DEFLATE, 512 px blocks, overviews), written under a
temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.enums import Resampling
from rasterio.windows import Window

from engine.boxes import Box

NODATA = 255
SCORE_MAX = 254
BLOCKSIZE = 512


def quantise(probabilities: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(probabilities, 0.0, 1.0) * SCORE_MAX).astype(np.uint8)


class TiledRaster:
    """A tiled GeoTIFF (uint8 unless told otherwise) written block by block."""

    def __init__(self, path: Path, height: int, width: int, count: int, transform, crs,
                 descriptions: list[str], tags: dict[str, str], colormap: dict[int, tuple] | None = None,
                 scale: float | None = None, dtype: str = "uint8", nodata: float = NODATA):
        self.path = path
        profile = dict(driver="GTiff", height=height, width=width, count=count, dtype=dtype, nodata=nodata,
                       transform=transform, crs=crs, tiled=True, blockxsize=BLOCKSIZE, blockysize=BLOCKSIZE,
                       compress="deflate", BIGTIFF="IF_SAFER")
        if height < BLOCKSIZE or width < BLOCKSIZE:
            profile.update(tiled=False)
            profile.pop("blockxsize"), profile.pop("blockysize")
        self.dataset = rasterio.open(path, "w", **profile)
        for band, text in enumerate(descriptions, start=1):
            self.dataset.set_band_description(band, text)
        if scale is not None:
            self.dataset.scales = tuple([scale] * count)
        self.dataset.update_tags(**tags)
        if colormap is not None:
            self.dataset.write_colormap(1, colormap)

    def write(self, core: Box, data: np.ndarray) -> None:
        data = data if data.ndim == 3 else data[None]
        self.dataset.write(data, window=Window(core.x, core.y, core.w, core.h))

    def close(self) -> None:
        if not self.dataset.closed:
            self.dataset.close()


def resample_to_grid(src_path: Path, dst_path: Path, height: int, width: int, transform, block: int = 2048) -> None:
    """Copy a working-grid raster onto the source grid (nearest neighbour, block by block)."""
    with rasterio.open(src_path) as src:
        profile = src.profile.copy()
        profile.update(height=height, width=width, transform=transform)
        if height >= BLOCKSIZE and width >= BLOCKSIZE:
            profile.update(tiled=True, blockxsize=BLOCKSIZE, blockysize=BLOCKSIZE)
        sy, sx = src.height / height, src.width / width
        with rasterio.open(dst_path, "w", **profile) as dst:
            dst.update_tags(**src.tags())
            for band in range(1, src.count + 1):
                dst.set_band_description(band, src.descriptions[band - 1] or "")
            dst.scales = src.scales
            if src.count == 1:
                try:
                    dst.write_colormap(1, src.colormap(1))
                except ValueError:
                    pass
            for y in range(0, height, block):
                for x in range(0, width, block):
                    h, w = min(block, height - y), min(block, width - x)
                    data = src.read(window=Window(x * sx, y * sy, w * sx, h * sy), out_shape=(src.count, h, w),
                                    resampling=Resampling.nearest)
                    dst.write(data, window=Window(x, y, w, h))


def publish_cog(src_path: Path, final_path: Path, overview_resampling: str) -> None:
    """Write `src_path` as a COG next to `final_path` under a temporary name, then rename it."""
    partial = final_path.with_name(f".{final_path.name}.partial")
    try:
        rasterio.shutil.copy(src_path, partial, driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=str(BLOCKSIZE),
                             RESAMPLING=overview_resampling, BIGTIFF="IF_SAFER")
        os.replace(partial, final_path)
    finally:
        if partial.exists():
            partial.unlink()


def class_tags(classes: list[dict], extra: dict[str, str]) -> dict[str, str]:
    return {"FARSLIP_CLASSES": json.dumps(classes, ensure_ascii=False), **extra}
