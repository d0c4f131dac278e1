"""Raster outputs: block-wise temporary GeoTIFFs, COG files, quantised scores, GDAL's settings.

Products (uint8, nodata 255):
- classes:    class index per pixel, colour table, class names in the `FARSLIP_CLASSES` tag
- confidence: probability of the chosen class × 254
- scores:     one band per class, probability × 254 (band scale 1/254, so QGIS shows 0-1)
Temporary files use fast DEFLATE (level 1); finished files are Cloud-Optimised GeoTIFFs (DEFLATE,
512 px blocks, overviews), written on all CPUs under a temporary name and renamed when complete. A
temporary raster can make its overviews as it is written (`engine.geo.overviews`), which the COG then
takes as they are instead of reading the raster back to make them.
"""

from __future__ import annotations

import json
import os
import warnings
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import rasterio
import torch
import rasterio.shutil
from rasterio.enums import ColorInterp
from rasterio.windows import Window

from engine import config
from engine.boxes import Box
from engine.geo.overviews import Pyramid, level_path, level_paths, overview_sizes
from engine.geo.sensor_model import SensorModel

NODATA = 255
SCORE_MAX = 254
BLOCKSIZE = 512


def quantise(probabilities: "torch.Tensor") -> "torch.Tensor":
    """Probabilities → uint8 0-254 (rounded half to even), computed on the tensor's device."""
    return torch.round(probabilities.clamp(0.0, 1.0) * SCORE_MAX).to(torch.uint8)


def gdal_env() -> rasterio.Env:
    """GDAL's settings while a raster is processed: a block cache of FARSLIP_GDAL_CACHE_MB (rasterio
    passes a number straight to GDALSetCacheMax64, i.e. in bytes) and decoding and compression on
    FARSLIP_GDAL_THREADS threads (default all CPUs)."""
    return rasterio.Env(GDAL_CACHEMAX=config.gdal_cache_mb() * 1024 * 1024, GDAL_NUM_THREADS=config.gdal_threads())


class TiledRaster:
    """A tiled GeoTIFF (uint8 unless told otherwise) written block by block; `transform` None writes
    no geotransform (the outputs of a raster without one); `sensor_model` (GCPs, RPCs) writes that
    instead of a geotransform and a CRS (the outputs of a raster georeferenced by one only). With
    `overviews` ("mode" or "average", uint8 only) its overview levels are written beside it as the
    blocks arrive (`level_paths`), in row-major order of a partition, as the pipeline writes them.
    """

    def __init__(self, path: Path, height: int, width: int, count: int, transform, crs,
                 descriptions: list[str], tags: dict[str, str], colormap: dict[int, tuple] | None = None,
                 scale: float | None = None, dtype: str = "uint8", nodata: float = NODATA,
                 overviews: str | None = None, sensor_model: SensorModel | None = None):
        self.path = path
        self.levels = [TiledRaster(level_path(path, k), h, w, count, None, None, [], {}, nodata=nodata)
                       for k, (h, w) in enumerate(overview_sizes(height, width) if overviews else [], start=1)]
        self.pyramid = (Pyramid(height, width, count, overviews, self._write_level, int(nodata))
                        if self.levels else None)
        profile = dict(driver="GTiff", height=height, width=width, count=count, dtype=dtype, nodata=nodata,
                       crs=crs, tiled=True, blockxsize=BLOCKSIZE, blockysize=BLOCKSIZE,
                       compress="deflate", zlevel=1, BIGTIFF="IF_SAFER", num_threads=config.gdal_threads(),
                       # one grey band per class: GDAL's default makes 3 or 4 uint8 bands RGB(A), which QGIS
                       # draws as a colour composite with the 4th band as transparency
                       photometric="MINISBLACK")
        if transform is not None and sensor_model is None:  # None: no geotransform, like an input without one
            profile["transform"] = transform
        if height < BLOCKSIZE or width < BLOCKSIZE:
            profile.update(tiled=False)
            profile.pop("blockxsize"), profile.pop("blockysize")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            self.dataset = rasterio.open(path, "w", **profile)
        for band, text in enumerate(descriptions, start=1):
            self.dataset.set_band_description(band, text)
        if scale is not None:
            self.dataset.scales = tuple([scale] * count)
        if sensor_model is not None:
            sensor_model.write_to(self.dataset)
        self.dataset.update_tags(**tags)
        if colormap is not None:
            self.dataset.write_colormap(1, colormap)
        elif count > 1:
            self.dataset.colorinterp = [ColorInterp.gray] + [ColorInterp.undefined] * (count - 1)

    def write(self, core: Box, data: np.ndarray) -> None:
        data = data if data.ndim == 3 else data[None]
        self.dataset.write(data, window=Window(core.x, core.y, core.w, core.h))
        if self.pyramid is not None:
            self.pyramid.add(core.y, core.x, data)

    def _write_level(self, level: int, y: int, x: int, data: np.ndarray) -> None:
        self.levels[level - 1].write(Box(y, x, data.shape[1], data.shape[2]), data)

    def close(self) -> None:
        for level in self.levels:
            level.close()
        if not self.dataset.closed:
            self.dataset.close()


def publish_cog(src_path: Path, final_path: Path, overview_resampling: str) -> None:
    """Write `src_path` as a COG next to `final_path` under a temporary name, then rename it. Overviews
    written beside it (a TiledRaster's `overviews`) are taken as they are; without them GDAL makes
    them with `overview_resampling`."""
    partial = final_path.with_name(f".{final_path.name}.partial")
    levels = level_paths(src_path)
    source = with_overviews(src_path, levels) if levels else src_path
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            rasterio.shutil.copy(source, partial, driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=str(BLOCKSIZE),
                                 RESAMPLING=overview_resampling, BIGTIFF="IF_SAFER",
                                 NUM_THREADS=config.gdal_threads())
        os.replace(partial, final_path)
    finally:
        if partial.exists():
            partial.unlink()


def with_overviews(src_path: Path, levels: list[Path]) -> Path:
    """A VRT beside `src_path` showing it (GDAL writes the VRT: grid, metadata, colours as they are)
    with `levels` as its overviews, band for band."""
    vrt = src_path.with_suffix(".vrt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        rasterio.shutil.copy(src_path, vrt, driver="VRT")
    tree = ElementTree.parse(vrt)
    for band in tree.getroot().iter("VRTRasterBand"):
        for path in levels:
            overview = ElementTree.SubElement(band, "Overview")
            ElementTree.SubElement(overview, "SourceFilename", relativeToVRT="0").text = str(path.resolve())
            ElementTree.SubElement(overview, "SourceBand").text = band.get("band")
    tree.write(vrt, encoding="UTF-8")
    return vrt


def class_tags(classes: list[dict], extra: dict[str, str]) -> dict[str, str]:
    return {"FARSLIP_CLASSES": json.dumps(classes, ensure_ascii=False), **extra}
