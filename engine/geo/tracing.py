"""Tracing the one-class regions of a class-raster block as polygons: the costly, self-contained part of
writing polygons (`engine.geo.polygons`), in a module light enough (no torch) for worker processes.

Each block is split into 4-connected regions of one class (`scipy.ndimage.label`, the same
connectivity as `rasterio.features.shapes`), traced by GDAL, and returned with what the writer needs
to average the confidence and to merge regions across block borders.
"""

from __future__ import annotations

import signal

import numpy as np
import shapely
from affine import Affine
from rasterio.features import shapes
from scipy import ndimage
from shapely.geometry import shape

from engine.boxes import Box

Region = tuple[shapely.Polygon, int, float, int, bool]  # (polygon, class value, confidence sum, pixels, at a seam)


def block_regions(core: Box, classes: np.ndarray, confidence: np.ndarray, transform: Affine, height: int,
                  width: int, nodata: int, tolerance: float = 0.0) -> list[Region]:
    """The 4-connected one-class regions of a block of a height × width raster, as polygons in the
    raster's coordinates, each with its class, summed confidence, pixel count and whether it touches
    an inner block border (then it may continue in the next block, and is left as traced); the others
    are simplified with `tolerance` (in the raster's units; 0: not at all)."""
    labels = np.zeros(classes.shape, dtype=np.int32)
    owner: list[int] = [nodata]
    for value in np.unique(classes):
        if value == nodata:
            continue
        lab, n = ndimage.label(classes == value)
        labels[lab > 0] = lab[lab > 0] + len(owner) - 1
        owner.extend([int(value)] * n)
    if len(owner) == 1:
        return []
    owner_arr = np.asarray(owner)
    sums = np.bincount(labels.ravel(), weights=confidence.ravel().astype(np.float64), minlength=len(owner))
    sizes = np.bincount(labels.ravel(), minlength=len(owner))
    seam_ids = set()
    if core.y > 0:
        seam_ids.update(np.unique(labels[0]))
    if core.y + core.h < height:
        seam_ids.update(np.unique(labels[-1]))
    if core.x > 0:
        seam_ids.update(np.unique(labels[:, 0]))
    if core.x + core.w < width:
        seam_ids.update(np.unique(labels[:, -1]))
    block_transform = transform * Affine.translation(core.x, core.y)
    traced = [(shape(geojson), int(value))
              for geojson, value in shapes(labels, mask=labels > 0, connectivity=4, transform=block_transform)]
    polygons = np.array([polygon for polygon, _ in traced], dtype=object)
    at_seam = np.array([cid in seam_ids for _, cid in traced], dtype=bool)
    if tolerance > 0 and len(traced):
        polygons[~at_seam] = simplified(polygons[~at_seam], tolerance)
    return [(polygon, int(owner_arr[cid]), float(sums[cid]), int(sizes[cid]), bool(seam))
            for polygon, (_, cid), seam in zip(polygons, traced, at_seam)]


def simplified(polygons: np.ndarray, tolerance: float) -> np.ndarray:
    """Polygons simplified within `tolerance` (Douglas-Peucker: linear time and memory); where that
    gives an invalid or empty polygon, by GEOS's topology-preserving simplifier instead (which on a
    polygon of hundreds of thousands of vertices — a road network merged across a large raster —
    takes seconds and hundreds of MB)."""
    out = shapely.simplify(polygons, tolerance, preserve_topology=False)
    bad = ~shapely.is_valid(out) | shapely.is_empty(out)
    if bad.any():
        out[bad] = shapely.simplify(polygons[bad], tolerance, preserve_topology=True)
    return out


def ignore_interrupts() -> None:
    """A worker process's start: Ctrl-C is the parent's to handle (no traceback from every worker)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
