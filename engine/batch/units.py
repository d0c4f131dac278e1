"""Work units of a batch run: one block of one raster's working grid, computed anywhere.

A unit is pure data (picklable, small): which raster, read how, which block. `read_unit` reads the
block extended by one crop (the pixels its owned crops need, see `engine.geo.blocks`) and
`compute_unit` turns them into the block's contributions, exactly as `segment` computes that block.
Readers keep a few rasters open per process, so a worker reading many blocks of one raster opens it once.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from engine.dense.sliding import Box
from engine.geo.blocks import block_boxes, block_contributions, block_extent, owned_crops
from engine.geo.source import RasterSource

# numpy form of engine.geo.blocks.Part: (target block, rectangle, logit sums [N, h, w], counts [1, h, w])
NumpyPart = tuple[tuple[int, int], Box, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class RasterSpec:
    """How to read a raster the way `segment` does."""

    path: str
    bands: tuple[int, int, int] | None = None
    gsd: float | None = None


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


def plan_units(raster: int, spec: RasterSpec, segmenter, block: int) -> tuple[RasterSource, list[Unit]]:
    """Open and probe a raster (raises FarSLIPError on a bad one) and list its blocks that own crops.
    The caller closes the returned source."""
    source = RasterSource(spec.path, spec.bands, spec.gsd)
    try:
        source.probe()
        h, w = source.grid.height, source.grid.width
        block = max(block, segmenter.crop)
        owned = owned_crops(segmenter, h, w, block)
        units = [Unit(raster, spec, h, w, block, i, j, block_extent(core, owned[i][j]), len(owned[i][j]))
                 for i, row in enumerate(block_boxes(h, w, block)) for j, core in enumerate(row) if owned[i][j]]
    except Exception:
        source.close()
        raise
    return source, units


@lru_cache(maxsize=8)
def _open(spec: RasterSpec) -> RasterSource:
    return RasterSource(spec.path, spec.bands, spec.gsd)


def read_unit(unit: Unit) -> np.ndarray:
    """RGB float32 [h, w, 3] (0-1, invalid pixels filled) of the unit's extended block."""
    return _open(unit.spec).read_rgb(unit.extent)[0]


def compute_unit(segmenter, unit: Unit, rgb: np.ndarray) -> list[NumpyPart]:
    """The unit's contributions to its block and neighbours, as numpy arrays on the CPU."""
    from engine.dense import prepare_image

    image = prepare_image(rgb)
    parts = block_contributions(segmenter, unit.height, unit.width, unit.block, unit.i, unit.j, image)
    return [(target, box, t.float().cpu().numpy(), c.float().cpu().numpy()) for target, box, t, c in parts]
