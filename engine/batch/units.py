"""Work units of a batch run: one block of one raster's working grid, and reading its pixels.

A unit is pure data (picklable, small): which raster, read how, which block. `read_unit` reads the
block extended by one crop (the pixels its owned crops need, see `engine.geo.blocks`); planning and
computing units live in `engine.batch.work`. This module stays free of torch, so reader processes
(Ray's reader actors) start in a fraction of a second. Readers keep a few rasters open per process,
so a worker reading many blocks of one raster opens it once.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from engine.boxes import Box
from engine.geo.source import RasterSource

# numpy form of engine.geo.blocks.Part: (target block, rectangle, strip shape (patch rows, padded crop
# height, crop height), crop-row tops [R], strip sums [R, N, patch rows, w], coverage [R, w])
NumpyPart = tuple[tuple[int, int], Box, tuple[int, int, int], np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class RasterSpec:
    """How to read a raster the way `segment` does."""

    path: str
    bands: tuple[int, int, int] | None = None
    gsd: float | None = None
    nodata: float | None = None


@dataclass(frozen=True)
class Unit:
    """Block (i, j) of raster number `raster` (working grid height × width, block size `block`)."""

    raster: int
    spec: RasterSpec
    height: int
    width: int
    block: int
    i: int
    j: int
    extent: Box  # working-grid pixels to read
    crops: int  # windows (crops) this block owns


Result = tuple[Unit, list[NumpyPart] | None, str | None]  # what executors yield: (unit, parts, error message)


@lru_cache(maxsize=8)
def _open(spec: RasterSpec) -> RasterSource:
    return RasterSource(spec.path, spec.bands, spec.gsd, nodata=spec.nodata)


def read_unit(unit: Unit) -> tuple[np.ndarray, np.ndarray]:
    """The unit's extended block as the model takes it: RGB [3, h, w] (uint8, or float32 0-1 after the
    stretch) and validity [h, w] (see `RasterSource.read_pixels`)."""
    return _open(unit.spec).read_pixels(unit.extent)
