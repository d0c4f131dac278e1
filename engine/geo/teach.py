"""Teaching classes from labelled polygons on a raster: the pixel features inside each polygon, with
segmentation's own crops, then `engine.dense.taught.TaughtClasses.learn`.

    taught = teach_from_file(segmenter, source, "labels.gpkg", "class")
    taught.save("site.classes.json")

The polygons (any vector file OGR reads; in its CRS, or the raster's when it has none) are mapped onto
the working grid. For each polygon the crops of the raster's global crop grid (the ones segmentation
runs) over the one or two grid cells holding most of it are run with the identity as the "text"
matrix: the mean over the covering crops of the normalised patch features, per pixel — exactly the
vector whose dot product with a text embedding is segmentation's logit there. Only a few crops per
polygon run, so teaching costs seconds, not a whole-raster pass. Polygons whose label names no class
are skipped (and counted).
"""

from __future__ import annotations

import numpy as np
import torch

from engine.boxes import Box
from engine.dense import Segmenter
from engine.dense.sliding import CropGrid, normalise, sliding_logits
from engine.dense.taught import TaughtClasses
from engine.geo.source import RasterSource
from engine.geo.vectors import read_labels

MAX_PIXELS_PER_POLYGON = 4096  # a random sample of each polygon's pixels (fixed seed) keeps memory small
MAX_CELLS_PER_POLYGON = 2  # crop-grid cells a polygon's pixels are taken from (each needs 4 crops)


def _to_working_grid(source: RasterSource, geom, crs: str | None):
    from shapely import affinity

    if crs is not None and source.crs is not None:
        geom = source.to_raster_crs(geom, crs, "labels")
    inverse = ~source.transform  # → source-area pixels (col, row), then → working-grid pixels
    geom = affinity.affine_transform(geom, [inverse.a, inverse.b, inverse.d, inverse.e, inverse.xoff, inverse.yoff])
    return affinity.scale(geom, 1 / source.grid.scale_x, 1 / source.grid.scale_y, origin=(0, 0))


def _tile_features(segmenter: Segmenter, source: RasterSource, region: Box) -> torch.Tensor:
    """[D, h, w] pixel features of a working-grid rectangle: the crops of the global grid touching it,
    run with the identity as the text matrix (a pixel's feature · a text embedding = segmentation's
    logit there)."""
    grid = source.grid
    boxes = CropGrid(grid.height, grid.width, segmenter.crop, segmenter.stride).touching(region)
    top, left = min(b.y for b in boxes), min(b.x for b in boxes)
    span = Box(top, left, max(b.y + b.h for b in boxes) - top, max(b.x + b.w for b in boxes) - left)
    pixels, valid = source.read_pixels(span)
    device = segmenter.model.device
    image = normalise(torch.from_numpy(np.ascontiguousarray(pixels)).to(device),
                      None if valid.all() else torch.from_numpy(valid).to(device))
    identity = torch.eye(segmenter.text.shape[1], device=device)
    return sliding_logits(segmenter.model, image, identity, segmenter.crop, segmenter.stride, segmenter.batch_size,
                          segmenter.options.global_bias, boxes=[b.shifted(-top, -left) for b in boxes],
                          region=region.shifted(-top, -left), upsampler=segmenter.upsampler)


def polygon_features(segmenter: Segmenter, source: RasterSource, geom, rng: np.random.Generator) -> np.ndarray:
    """[P, D] features of (a sample of) the valid working-grid pixels inside `geom` (working-grid
    coordinates). They are taken from the cells of the crop grid (stride × stride squares, each
    covered by the same 2 × 2 crops wherever it lies) that hold most of the polygon, at most
    MAX_CELLS_PER_POLYGON of them: a handful of crops per polygon, however large it is."""
    from rasterio.features import geometry_mask
    from rasterio.transform import Affine

    grid, step = source.grid, segmenter.stride
    minx, miny, maxx, maxy = geom.bounds
    x0, y0 = max(0, int(np.floor(minx)) // step * step), max(0, int(np.floor(miny)) // step * step)
    x1, y1 = min(grid.width, int(np.ceil(maxx))), min(grid.height, int(np.ceil(maxy)))
    if x1 <= x0 or y1 <= y0:
        return np.zeros((0, 0), np.float32)
    region = Box(y0, x0, y1 - y0, x1 - x0)
    inside = geometry_mask([geom], out_shape=(region.h, region.w), invert=True,
                           transform=Affine.translation(region.x, region.y))
    inside &= source.read_valid(region)
    if not inside.any():
        return np.zeros((0, 0), np.float32)
    cells = [(int(inside[cy:cy + step, cx:cx + step].sum()), cy, cx)
             for cy in range(0, region.h, step) for cx in range(0, region.w, step)]
    cells = [c for c in sorted(cells, reverse=True)[:MAX_CELLS_PER_POLYGON] if c[0] > 0]
    per_cell = MAX_PIXELS_PER_POLYGON // len(cells)
    out = []
    for _, cy, cx in cells:
        cell = Box(region.y + cy, region.x + cx, min(step, region.h - cy), min(step, region.w - cx))
        rows, cols = np.nonzero(inside[cy:cy + cell.h, cx:cx + cell.w])
        if len(rows) > per_cell:
            keep = np.sort(rng.choice(len(rows), per_cell, replace=False))
            rows, cols = rows[keep], cols[keep]
        features = _tile_features(segmenter, source, cell)
        picked = features[:, torch.from_numpy(rows).to(features.device), torch.from_numpy(cols).to(features.device)]
        out.append(picked.T.float().cpu().numpy())
    return np.concatenate(out)


def teach(segmenter: Segmenter, source: RasterSource, geoms: list, values: list[str], crs: str | None,
          made: dict | None = None, seed: int = 0) -> TaughtClasses:
    """Taught classes from polygons (`geoms`, in `crs` or the raster's when None) whose label (`values`)
    names one of the segmenter's classes (any of its synonyms, case-insensitive)."""
    prompts = segmenter.prompts
    rng = np.random.default_rng(seed)
    features: dict[int, list[np.ndarray]] = {}
    skipped: dict[str, int] = {}
    for geom, value in zip(geoms, values):
        c = prompts.index_of(value) if value else None
        if c is None or geom is None or geom.is_empty:
            skipped[value or "(empty)"] = skipped.get(value or "(empty)", 0) + 1
            continue
        pixels = polygon_features(segmenter, source, _to_working_grid(source, geom, crs), rng)
        if len(pixels):
            features.setdefault(c, []).append(pixels)
    record = {"raster": str(source.path), "working_gsd_m": source.working_gsd,
              "template_set": segmenter.options.template_set, "skipped_labels": skipped, **(made or {})}
    return TaughtClasses.learn(segmenter.model, prompts, features, segmenter.options.template_set, record)


def teach_from_file(segmenter: Segmenter, source: RasterSource, labels: str, field: str) -> TaughtClasses:
    """`teach` with the polygons of a vector file and its `field`."""
    geoms, values, crs = read_labels(labels, field)
    return teach(segmenter, source, geoms, values, crs, {"labels": str(labels), "field": field})
