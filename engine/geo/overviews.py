"""Overviews of an output raster, made while its blocks are written instead of read back at the end.

A COG carries overviews: copies of the raster at 1/2, 1/4, … of its size, down to the first that fits
one 512 px tile (GDAL's COG rule, so the levels are those GDAL would make). GDAL makes them when the
COG is written, by reading the whole raster back — for a class map the slowest step of a run on a GPU
(0.5 s of 1.46 s on an H100 for 8960² px). Here each rectangle, as it is written, is also reduced 2 × 2
into the first overview, whose rows are reduced into the second, and so on (`Pyramid`); the COG is
then copied from a VRT naming these files as the raster's overviews (`publish_cog`), so GDAL only
compresses.

Reductions (each 2 × 2 group of valid pixels; no data only where all four are no data):
- `mode`: the most frequent value, a tie going to the first in reading order (top-left, top-right,
  bottom-left, bottom-right) — GDAL's MODE on class maps;
- `average`: the mean, rounded half up — GDAL's AVERAGE on uint8.
Computed with torch on the CPU (vectorised, on all cores): with numpy on the writer thread's one core
the writer held the blocks back on an H100 box (default GSD 0.29 of the model's rate against 0.32).

Rectangles arrive in row-major order and partition the raster (as a run's blocks do, also after
being put back on the source grid): the rectangles of one band share their rows. A rectangle starting
on an odd row or column completes the groups of the row above (kept from the band before) or of the
column to its left (kept from its left neighbour); one ending on an odd row or column inside the
raster keeps that row or column for them. Memory per level: one row of the level's width and one
column of a band's height — never the raster.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

TILE = 512


def overview_sizes(height: int, width: int, tile: int = TILE) -> list[tuple[int, int]]:
    """(height, width) of each overview level GDAL's COG driver makes for a height × width raster."""
    sizes, factor = [], 1
    while -(-height // factor) > tile or -(-width // factor) > tile:
        factor *= 2
        sizes.append((-(-height // factor), -(-width // factor)))
    return sizes


def level_path(base: Path, level: int) -> Path:
    """Where overview `level` (1 = half size) of the raster at `base` is written."""
    return base.with_name(f"{base.stem}.ovr{level}{base.suffix}")


def level_paths(base: Path) -> list[Path]:
    """The overview files written beside `base`, from the largest; [] when there are none."""
    paths, level = [], 1
    while level_path(base, level).exists():
        paths.append(level_path(base, level))
        level += 1
    return paths


def _groups(data: torch.Tensor) -> list[torch.Tensor]:
    """The four pixels of each 2 × 2 group of data [..., 2a, 2b], in reading order."""
    return [data[..., 0::2, 0::2], data[..., 0::2, 1::2], data[..., 1::2, 0::2], data[..., 1::2, 1::2]]


def reduce_mode(data: torch.Tensor, nodata: int) -> torch.Tensor:
    """Majority of the valid values of each 2 × 2 group (see the module's docstring)."""
    v0, v1, v2, v3 = _groups(data)
    if (data.numpy() == nodata).any():  # (numpy's test is 10× faster than torch's here)
        return _valid_mode(v0, v1, v2, v3, nodata)
    # v0 wins when it occurs twice or more (nothing can beat it), else v1 when it does, else v2
    # when v2 == v3, else all differ and v0 is first
    result = torch.where(v2 == v3, v2, v0)
    result = torch.where((v1 == v2) | (v1 == v3), v1, result)
    return torch.where((v0 == v1) | (v0 == v2) | (v0 == v3), v0, result)


def _valid_mode(v0: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor, v3: torch.Tensor, nodata: int) -> torch.Tensor:
    """`reduce_mode` of groups holding no data: the same choice among each group's valid values (a
    value occurring twice or more counts only when valid; where all valid values differ, the first
    valid one wins; no data where none is)."""
    ok0, ok1, ok2 = v0 != nodata, v1 != nodata, v2 != nodata
    result = torch.where(ok2, v2, v3)  # the first valid value (v3 is no data when all four are)
    result = torch.where(ok1, v1, result)
    result = torch.where(ok0, v0, result)
    result = torch.where((v2 == v3) & ok2, v2, result)
    result = torch.where(((v1 == v2) | (v1 == v3)) & ok1, v1, result)
    return torch.where(((v0 == v1) | (v0 == v2) | (v0 == v3)) & ok0, v0, result)


def reduce_average(data: torch.Tensor, nodata: int) -> torch.Tensor:
    """Rounded mean of the valid values of each 2 × 2 group (see the module's docstring)."""
    values = torch.stack(_groups(data)).to(torch.int32)
    valid = values != nodata
    n = valid.sum(dim=0)
    total = (values * valid).sum(dim=0)
    mean = torch.div(total + n // 2, n.clamp(min=1), rounding_mode="floor")
    return torch.where(n > 0, mean, nodata).to(torch.uint8)


REDUCTIONS: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {"mode": reduce_mode, "average": reduce_average}

WriteFn = Callable[[int, int, int, np.ndarray], None]  # (level, y, x, data [c, h, w]) on that level's grid


class _Level:
    """One 2 × 2 reduction: rectangles of its input grid in, rectangles of the next level out."""

    def __init__(self, height: int, width: int, count: int, reduce: Callable, nodata: int):
        self.height, self.width, self.nodata, self.reduce = height, width, nodata, reduce
        self.row_above = np.full((count, width), nodata, dtype=np.uint8)  # last row of the band before
        self.column_left: np.ndarray | None = None  # last column of the rectangle to the left

    def add(self, y: int, x: int, data: np.ndarray) -> tuple[int, int, np.ndarray] | None:
        """Reduce what `data` [c, h, w] at (y, x) completes; (y, x, reduced) on the next grid, or None."""
        count, h, w = data.shape
        top, left = y % 2, x % 2
        block = np.empty((count, h + top, w + left), dtype=np.uint8)
        block[:, top:, left:] = data
        if top:
            block[:, 0, left:] = self.row_above[:, x:x + w]
        if left:
            block[:, :, 0] = self.column_left
        y0, x0 = y - top, x - left
        rows, cols = block.shape[1:]
        if rows % 2 and y + h < self.height:  # odd last row inside the raster: the band below needs it
            self.row_above[:, x0:x + w] = block[:, -1]
            rows -= 1
        if cols % 2 and x + w < self.width:  # odd last column: the rectangle to the right needs it
            self.column_left = block[:, :, -1].copy()
            cols -= 1
        block = block[:, :rows, :cols]
        if rows % 2 or cols % 2:  # odd size at the raster's bottom or right edge: pairs with no data
            block = np.pad(block, ((0, 0), (0, rows % 2), (0, cols % 2)), constant_values=self.nodata)
        if block.shape[1] == 0 or block.shape[2] == 0:
            return None
        reduced = self.reduce(torch.from_numpy(np.ascontiguousarray(block)), self.nodata).numpy()
        return y0 // 2, x0 // 2, reduced


class Pyramid:
    """Every overview level of a height × width × count uint8 raster, fed rectangle by rectangle in
    row-major order; `write(level, y, x, data)` receives each reduced rectangle."""

    def __init__(self, height: int, width: int, count: int, reduction: str, write: WriteFn, nodata: int = 255):
        reduce = REDUCTIONS[reduction]
        grids = [(height, width)] + overview_sizes(height, width)
        self.levels = [_Level(h, w, count, reduce, nodata) for h, w in grids[:-1]]
        self.write = write

    def add(self, y: int, x: int, data: np.ndarray) -> None:
        """A written rectangle data [c, h, w] (uint8) at (y, x) of the raster."""
        for number, level in enumerate(self.levels, start=1):
            reduced = level.add(y, x, data)
            if reduced is None:
                return
            y, x, data = reduced
            self.write(number, y, x, data)
