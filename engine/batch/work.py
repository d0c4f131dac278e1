"""Planning a raster's work units and computing one: the torch side of a batch run.

`plan_units` probes a raster and lists the blocks of `segment`'s partition that own crops;
`compute_unit` turns a unit's pixels into its contributions exactly as `segment` computes that block
(`engine.geo.blocks.block_contributions`), so a batch run's class maps equal `segment`'s.
"""

from __future__ import annotations

import numpy as np
import torch

from engine.batch.units import NumpyPart, RasterSpec, Unit
from engine.boxes import Box
from engine.dense.sliding import RowStrips, normalise
from engine.dense.transfer import pinned, upload
from engine.geo.blocks import block_boxes, block_contributions, block_extent, owned_crops, working_block
from engine.geo.source import RasterSource


def plan_units(raster: int, spec: RasterSpec, segmenter, block: int) -> tuple[RasterSource, list[Unit]]:
    """Open and probe a raster (raises FarSLIPError on a bad one) and list its blocks that own crops.
    The caller closes the returned source."""
    source = RasterSource(spec.path, spec.bands, spec.gsd, nodata=spec.nodata)
    try:
        source.probe()
        h, w = source.grid.height, source.grid.width
        block = working_block(segmenter, block)
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
    return [(target, *strips_to_numpy(strips)) for target, strips in parts]


def strips_to_numpy(strips: RowStrips) -> tuple[Box, tuple[int, int, int], np.ndarray, np.ndarray, np.ndarray]:
    """A part's strips as (rectangle, shape, crop-row tops, stacked sums, stacked coverage) on the CPU."""
    tops = sorted(strips.rows)
    n, a = strips.rows[tops[0]][0].shape[:2] if tops else (0, 0)
    sums = (torch.stack([strips.rows[y][0] for y in tops]).cpu().numpy() if tops
            else np.zeros((0, n, a, strips.region.w), np.float32))
    cover = (torch.stack([strips.rows[y][1] for y in tops]).cpu().numpy() if tops
             else np.zeros((0, strips.region.w), np.float32))
    return strips.region, tuple(strips.shape or (0, 0, 0)), np.array(tops, dtype=np.int64), sums, cover


def strips_from_numpy(box: Box, shape, tops: np.ndarray, sums: np.ndarray, cover: np.ndarray) -> RowStrips:
    """The inverse of `strips_to_numpy` (tensors sharing the arrays' memory)."""
    strips = RowStrips(box, tuple(int(v) for v in shape) if len(tops) else None)
    strips.rows = {int(y): [torch.from_numpy(sums[k]), torch.from_numpy(cover[k])] for k, y in enumerate(tops)}
    return strips
