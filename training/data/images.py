"""Images as training and evaluation take them: 8-bit RGB from any file a dataset holds.

PIL's own `convert("RGB")` clips 16-bit and 32-bit images to white (a 12-bit scene, values 700-3900,
becomes all 255), and a cast to uint8 wraps them (701 → 189). Images deeper than 8 bits are stretched
instead, between their 2nd and 98th percentiles — as the engine stretches a raster — so the picture is
kept; 8-bit images are converted exactly as before.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

DEEP_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")  # PIL's modes of more than 8 bits a pixel
STRETCH_PERCENTILES = (2, 98)


def stretched(data: np.ndarray) -> np.ndarray:
    """uint8 of any array: as it is when uint8, else stretched linearly from its 2nd to its 98th
    percentile (over all its bands; NaN and ±inf count as the lowest value)."""
    if data.dtype == np.uint8:
        return data
    values = np.asarray(data, dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, dtype=np.uint8)
    lo, hi = np.percentile(values[finite], STRETCH_PERCENTILES)
    values = np.where(finite, values, lo)
    return np.clip(np.round((values - lo) / max(hi - lo, 1e-12) * 255), 0, 255).astype(np.uint8)


def is_deep(image: Image.Image) -> bool:
    return image.mode in DEEP_MODES


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB of an image of any PIL mode: deeper than 8 bits stretched (`stretched`), others converted."""
    if is_deep(image):
        return Image.fromarray(stretched(np.asarray(image))).convert("RGB")
    return image.convert("RGB")
