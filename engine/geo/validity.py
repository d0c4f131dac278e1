"""Where a block has no data, and putting no data into a block's products."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BlockValidity:
    """Where a block has no data (`RasterSource.block_validity`): `working`, its validity [h, w] on the
    working grid, put back with the classes; or (`working` None) `source_invalid`, where its source-grid
    rectangle has no data at the source's own pixels (None: nowhere)."""

    working: np.ndarray | None
    source_invalid: np.ndarray | None = None


def filled(arrays, invalid: np.ndarray | None, fill) -> list:
    """Arrays [..., h, w] (numpy, or torch tensors on one device) with `fill` where `invalid` is True."""
    if not arrays or invalid is None or not invalid.any():
        return list(arrays)
    if isinstance(arrays[0], np.ndarray):
        return [np.where(invalid, np.asarray(fill, dtype=a.dtype), a) for a in arrays]
    from engine.dense.transfer import pinned, upload

    mask = upload(pinned(invalid), arrays[0].device)  # sent to the device once for all of them
    return [a.masked_fill(mask, fill) for a in arrays]
