"""Finding a constant edge frame: the zero (or 255) border that reprojection or mosaicking leaves
around imagery, often without a nodata tag. Untagged, it is classified like land and drags the
contrast stretch; `RasterSource` warns when it is large and offers `--nodata VALUE`.

    value, fraction = edge_frame(data)   # data [bands, h, w] (a decimated read of the area)

A run that reads every pixel anyway gathers that decimated picture from its own reads
(`FrameSample`) instead of reading the raster once more for it.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from engine.boxes import Box

LARGE_FRAME = 0.05  # share of the area above which a frame is worth a warning
SAMPLE_SIDE = 512  # a FrameSample's longest side: the check takes ~5 ms there (~20 ms at 1024)


def edge_frame(data: np.ndarray) -> tuple[tuple[float, ...] | None, float]:
    """(the frame's value per band, its share of the area): the pixels connected to the raster's
    edge that hold exactly the same values, in every band, as an edge pixel. The most common edge
    value is tried; (None, 0.0) when no edge pixel repeats."""
    bands, h, w = data.shape
    if h < 3 or w < 3:
        return None, 0.0
    # each edge pixel once (the corners are in a row and a column)
    edge = np.concatenate([data[:, 0, :], data[:, -1, :], data[:, 1:-1, 0], data[:, 1:-1, -1]], axis=1).T
    values, counts = np.unique(edge, axis=0, return_counts=True)
    best = values[int(np.argmax(counts))]
    if counts.max() < 2 or not np.all(np.isfinite(best)):
        return None, 0.0
    same = np.all(data == best[:, None, None], axis=0)
    labels, _ = ndimage.label(same)
    touching = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    touching = touching[touching > 0]
    fraction = float(np.isin(labels, touching).mean()) if touching.size else 0.0
    return tuple(float(v) for v in best), fraction


class FrameSample:
    """A decimated copy (every `step`-th pixel, at most `max_side` a side) of a height × width grid,
    filled from rectangles read for other purposes, in any order and from several threads."""

    def __init__(self, height: int, width: int, bands: int, max_side: int = SAMPLE_SIDE):
        self.step = max(1, -(-max(height, width) // max_side))
        shape = (-(-height // self.step), -(-width // self.step))
        self.data = np.zeros((bands, *shape), dtype=np.uint8)
        self._filled = np.zeros(shape, dtype=bool)

    def add(self, rect: Box, pixels: np.ndarray) -> None:
        """The pixels [bands, rect.h, rect.w] (uint8) of a rectangle of the grid."""
        s = self.step
        r0, r1 = -(-rect.y // s), -(-(rect.y + rect.h) // s)
        c0, c1 = -(-rect.x // s), -(-(rect.x + rect.w) // s)
        if r1 <= r0 or c1 <= c0:
            return
        self.data[:, r0:r1, c0:c1] = pixels[:, r0 * s - rect.y::s, c0 * s - rect.x::s]
        self._filled[r0:r1, c0:c1] = True

    @property
    def complete(self) -> bool:
        return bool(self._filled.all())
