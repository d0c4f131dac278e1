"""Planning a raster's work units and computing one: the torch side of a batch run.

`plan_units` probes a raster and lists the blocks of `segment`'s partition that own crops;
`compute_unit` turns a unit's pixels into its contributions exactly as `segment` computes that block
(`engine.geo.blocks.block_contributions`), so a batch run's class maps equal `segment`'s.
"""

from __future__ import annotations

import numpy as np

from engine.batch.units import NumpyPart, RasterSpec, Unit
from engine.dense.sliding import normalise
from engine.dense.transfer import pinned, upload
from engine.geo.blocks import block_boxes, block_contributions, block_extent, owned_crops
from engine.geo.source import RasterSource


def plan_units(raster: int, spec: RasterSpec, segmenter, block: int) -> tuple[RasterSource, list[Unit]]:
    """Open and probe a raster (raises FarSLIPError on a bad one) and list its blocks that own crops.
    The caller closes the returned source."""
    source = RasterSource(spec.path, spec.bands, spec.gsd, nodata=spec.nodata)
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


def compute_unit(segmenter, unit: Unit, pixels: tuple[np.ndarray, np.ndarray]) -> list[NumpyPart]:
    """The unit's contributions to its block and neighbours (from `read_unit`'s pixels and validity),
    as numpy arrays on the CPU."""
    device = segmenter.model.device
    rgb, valid = pixels
    image = normalise(upload(pinned(rgb), device), None if valid.all() else upload(pinned(valid), device))
    parts = block_contributions(segmenter, unit.height, unit.width, unit.block, unit.i, unit.j, image)
    return [(target, box, t.float().cpu().numpy(), c.float().cpu().numpy()) for target, box, t, c in parts]
