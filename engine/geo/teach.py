"""Teaching classes from labelled polygons on a raster: the pixel features inside each polygon, with
segmentation's own crops, then `engine.dense.taught.TaughtClasses.learn`.

    taught = teach_from_file(segmenter, source, "labels.gpkg", "class")
    taught.save("site.classes.json")

The polygons (any vector file OGR reads; in its CRS, or the raster's when it has none) are mapped onto
the working grid. For each polygon, the crops of the raster's global crop grid (the ones segmentation
runs) over the one or two grid cells holding most of it are run through segmentation's own
`crop_maps` with the identity as the "text" matrix: each patch's normalised feature (less λ × the
crop's image-level feature under the global-bias preset), whose dot product with a text embedding is
segmentation's logit for that patch before it is up-sampled and averaged over crops. The patches
whose centres fall inside the polygon are its samples. Only a few crops per polygon run, so teaching
costs seconds, not a whole-raster pass. Polygons whose label names no class are skipped (and counted).
"""

from __future__ import annotations

import numpy as np
import torch

from engine.boxes import Box
from engine.dense import Segmenter
from engine.dense.sliding import CropGrid, crop_maps, cut_crops, normalise
from engine.dense.taught import TaughtClasses
from engine.geo.source import RasterSource
from engine.geo.vectors import read_labels

MAX_PIXELS_PER_POLYGON = 4096  # a random sample of each polygon's patches (fixed seed) keeps memory small
MAX_CELLS_PER_POLYGON = 2  # crop-grid cells a polygon's patches are taken from (each needs 4 crops)


def _to_working_grid(source: RasterSource, geom, crs: str | None):
    from shapely import affinity

    if crs is not None and source.crs is not None:
        geom = source.to_raster_crs(geom, crs, "labels")
    inverse = ~source.transform  # → source-area pixels (col, row), then → working-grid pixels
    geom = affinity.affine_transform(geom, [inverse.a, inverse.b, inverse.d, inverse.e, inverse.xoff, inverse.yoff])
    return affinity.scale(geom, 1 / source.grid.scale_x, 1 / source.grid.scale_y, origin=(0, 0))


def _cell_patches(segmenter: Segmenter, source: RasterSource, cell: Box) -> tuple[torch.Tensor, np.ndarray]:
    """The patch features of the crops of the global grid that cover a working-grid cell — [P, D]:
    each patch's normalised feature (less λ × the crop's image-level feature under the global-bias
    preset), the identity standing in for the text matrix in segmentation's own `crop_maps` — and
    each patch's centre [P, 2] (row, col) on the working grid; patches centred on no data left out."""
    grid = source.grid
    boxes = CropGrid(grid.height, grid.width, segmenter.crop, segmenter.stride).touching(cell)
    top, left = min(b.y for b in boxes), min(b.x for b in boxes)
    span = Box(top, left, max(b.y + b.h for b in boxes) - top, max(b.x + b.w for b in boxes) - left)
    pixels, valid = source.read_pixels(span)
    device = segmenter.model.device
    image = normalise(torch.from_numpy(np.ascontiguousarray(pixels)).to(device),
                      None if valid.all() else torch.from_numpy(valid).to(device))
    identity = torch.eye(segmenter.text.shape[1], device=device)
    features, centres = [], []
    for size in {(b.h, b.w) for b in boxes}:  # crops at the raster's edges may be smaller
        same = [b for b in boxes if (b.h, b.w) == size]
        maps, (ph, pw) = crop_maps(segmenter.model, cut_crops(image, [b.shifted(-top, -left) for b in same]),
                                   identity, segmenter.crop, segmenter.options.global_bias)
        a, c = maps.shape[-2:]
        ys = (np.arange(a) + 0.5) * ph / a
        xs = (np.arange(c) + 0.5) * pw / c
        for k, b in enumerate(same):
            yy, xx = np.meshgrid(b.y + ys, b.x + xs, indexing="ij")
            keep = (yy < b.y + b.h) & (xx < b.x + b.w)  # patches of the padding are not the crop's
            keep &= valid[np.minimum(yy, b.y + b.h - 1).astype(int) - top,
                          np.minimum(xx, b.x + b.w - 1).astype(int) - left]  # nor patches centred on no data
            features.append(maps[k].permute(1, 2, 0)[torch.from_numpy(keep).to(maps.device)])
            centres.append(np.stack([yy[keep], xx[keep]], axis=1))
    return torch.cat(features).float().cpu(), np.concatenate(centres)


def polygon_features(segmenter: Segmenter, source: RasterSource, geom, rng: np.random.Generator) -> np.ndarray:
    """[P, D] features of the polygon `geom` (working-grid coordinates): the patches, of the crops that
    cover the crop-grid cells (stride × stride squares) holding most of it, whose centres fall inside
    it — at most MAX_CELLS_PER_POLYGON cells, so a handful of crops per polygon however large it is.
    A polygon smaller than a patch gives the patches around its centre."""
    import shapely

    grid, step = source.grid, segmenter.stride
    minx, miny, maxx, maxy = geom.bounds
    x0, y0 = max(0, int(np.floor(minx)) // step * step), max(0, int(np.floor(miny)) // step * step)
    x1, y1 = min(grid.width, int(np.ceil(maxx))), min(grid.height, int(np.ceil(maxy)))
    if x1 <= x0 or y1 <= y0:
        return np.zeros((0, 0), np.float32)
    cells = []
    for cy in range(y0, y1, step):
        for cx in range(x0, x1, step):
            box = shapely.box(cx, cy, min(cx + step, grid.width), min(cy + step, grid.height))
            overlap = box.intersection(geom).area
            if overlap > 0:
                cells.append((overlap, cy, cx))
    out = []
    for _, cy, cx in sorted(cells, reverse=True)[:MAX_CELLS_PER_POLYGON]:
        cell = Box(cy, cx, min(step, grid.height - cy), min(step, grid.width - cx))
        features, centres = _cell_patches(segmenter, source, cell)
        points = shapely.points(centres[:, 1], centres[:, 0])
        inside = shapely.contains(geom, points)
        if not inside.any():  # a polygon smaller than a patch: the patches nearest its centre
            distance = shapely.distance(geom.centroid, points)
            inside = distance <= distance.min() + 1e-6
        out.append(features[torch.from_numpy(inside)].numpy())
    if not out:
        return np.zeros((0, 0), np.float32)
    pixels = np.concatenate(out)
    if len(pixels) > MAX_PIXELS_PER_POLYGON:
        pixels = pixels[np.sort(rng.choice(len(pixels), MAX_PIXELS_PER_POLYGON, replace=False))]
    return pixels


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
