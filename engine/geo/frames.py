"""Finding a constant edge frame: the zero (or 255) border that reprojection or mosaicking leaves
around imagery, often without a nodata tag. Untagged, it is classified like land and drags the
contrast stretch; `RasterSource` warns when it is large and offers `--nodata VALUE`.

    value, fraction = edge_frame(data)   # data [bands, h, w] (a decimated read of the area)
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

LARGE_FRAME = 0.05  # share of the area above which a frame is worth a warning


def edge_frame(data: np.ndarray) -> tuple[tuple[float, ...] | None, float]:
    """(the frame's value per band, its share of the area): the pixels connected to the raster's
    edge that hold exactly the same values, in every band, as an edge pixel. The most common edge
    value is tried; (None, 0.0) when no edge pixel repeats."""
    bands, h, w = data.shape
    if h < 3 or w < 3:
        return None, 0.0
    edge = np.concatenate([data[:, 0, :], data[:, -1, :], data[:, :, 0], data[:, :, -1]], axis=1).T
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
