"""Teaching classes from labelled polygons on a raster: the pixel features inside each polygon, with
segmentation's own crops, then `engine.dense.taught.TaughtClasses.learn`.

    taught = teach_from_file(segmenter, source, "labels.gpkg", "class")
    taught.save("site.classes.json")

The polygons (any vector file OGR reads; in its CRS, or the raster's when it has none) are mapped onto
the working grid. For each polygon, one or two crops of the raster's global crop grid (the ones
segmentation runs: those centred inside it nearest to a point surely inside it) are run — in
batches, each crop once however many polygons share it — through segmentation's own `crop_maps`
with the identity as the "text" matrix: each patch's normalised feature (less λ × the crop's
image-level feature under the global-bias preset), whose dot product with a text embedding is
segmentation's logit for that patch before it is up-sampled and averaged over crops. The patches
whose centres fall inside the polygon are its samples. So teaching costs about two crops per
polygon, not a whole-raster pass. Polygons whose label names no class are skipped (and counted).
"""

from __future__ import annotations

import numpy as np
import torch

from engine.boxes import Box
from engine.dense import PromptSet, Segmenter
from engine.dense.prompts import name_key
from engine.dense.sliding import CropGrid, crop_maps, normalise
from engine.dense.taught import MIN_SAMPLES, TaughtClasses
from engine.errors import InputError
from engine.geo.source import RasterSource
from engine.geo.vectors import read_labels

MAX_SAMPLES_PER_POLYGON = 4096  # a random sample of each polygon's patches (fixed seed) keeps memory small
CROPS_PER_POLYGON = 2  # crops of the global grid a polygon's patches are taken from


def _to_working_grid(source: RasterSource, geom, crs: str | None):
    from shapely import affinity

    if crs is not None and source.crs is not None:
        geom = source.to_raster_crs(geom, crs, "labels")
    inverse = ~source.transform  # → source-area pixels (col, row), then → working-grid pixels
    geom = affinity.affine_transform(geom, [inverse.a, inverse.b, inverse.d, inverse.e, inverse.xoff, inverse.yoff])
    return affinity.scale(geom, 1 / source.grid.scale_x, 1 / source.grid.scale_y, origin=(0, 0))


def _placed(source: RasterSource, geom, crs: str | None):
    """The polygon on the working grid, or None when it cannot be placed there (coordinates that do not
    exist in the raster's CRS: a GeoJSON in metres read as the longitudes and latitudes it claims)."""
    import shapely

    try:
        with np.errstate(all="ignore"):  # (infinite coordinates: numpy's warnings are no news to the user)
            placed = _to_working_grid(source, geom, crs)
    except (shapely.errors.GEOSException, ValueError):
        return None
    bounds = placed.bounds
    return placed if not placed.is_empty and all(np.isfinite(bounds)) else None


def choose_crops(crops: list[Box], geom, per_polygon: int = CROPS_PER_POLYGON) -> list[Box]:
    """The crops of the global grid a polygon's samples come from: those whose centres lie inside it,
    nearest first to a point surely inside it (shapely's representative point); a polygon no crop
    centre falls in (thin, or smaller than a crop) gets the crop centred nearest to that point."""
    import shapely

    if not crops:
        return []
    centres = np.array([(b.x + b.w / 2, b.y + b.h / 2) for b in crops])
    anchor = geom.representative_point()
    distance = np.hypot(centres[:, 0] - anchor.x, centres[:, 1] - anchor.y)
    inside = shapely.contains_xy(geom, centres[:, 0], centres[:, 1])
    order = np.argsort(distance)
    chosen = [crops[i] for i in order if inside[i]][:per_polygon]
    return chosen or [crops[int(order[0])]]


class CropFeatures:
    """Patch features of crops of the global grid, computed in batches with segmentation's own
    `crop_maps` (the identity standing in for the text matrix: each patch's normalised feature, less
    λ × the crop's image-level feature under the global-bias preset), each crop once."""

    def __init__(self, segmenter: Segmenter, source: RasterSource):
        self.segmenter, self.source = segmenter, source
        self.cache: dict[Box, tuple[torch.Tensor, np.ndarray]] = {}

    def compute(self, boxes: list[Box]) -> None:
        todo = list(dict.fromkeys(b for b in boxes if b not in self.cache))
        size = max(1, self.segmenter.batch_size)
        for shape in {(b.h, b.w) for b in todo}:  # crops at the raster's edges may be smaller
            same = [b for b in todo if (b.h, b.w) == shape]
            for start in range(0, len(same), size):
                self._batch(same[start:start + size])

    def _batch(self, boxes: list[Box]) -> None:
        seg, device = self.segmenter, self.segmenter.model.device
        images, valids = [], []
        for b in boxes:
            pixels, valid = self.source.read_pixels(b)
            images.append(normalise(torch.from_numpy(np.ascontiguousarray(pixels)).to(device),
                                    None if valid.all() else torch.from_numpy(valid).to(device)))
            valids.append(valid)
        identity = torch.eye(seg.text.shape[1], device=device)
        maps, (ph, pw) = crop_maps(seg.model, torch.stack(images), identity, seg.crop, seg.options.global_bias)
        a, c = maps.shape[-2:]
        ys, xs = (np.arange(a) + 0.5) * ph / a, (np.arange(c) + 0.5) * pw / c
        for k, b in enumerate(boxes):
            yy, xx = np.meshgrid(ys, xs, indexing="ij")
            keep = (yy < b.h) & (xx < b.w)  # patches of the padding are not the crop's
            keep &= valids[k][np.minimum(yy, b.h - 1).astype(int), np.minimum(xx, b.w - 1).astype(int)]
            features = maps[k].permute(1, 2, 0)[torch.from_numpy(keep).to(maps.device)].float().cpu()
            self.cache[b] = features, np.stack([b.y + yy[keep], b.x + xx[keep]], axis=1)  # centres (row, col)
        self.patch = max(ph / a, pw / c)  # a patch's side in working pixels

    def inside(self, boxes: list[Box], geom) -> np.ndarray:
        """[P, D] features of the patches of `boxes` whose centres lie inside `geom` (else, for a polygon
        smaller than a patch, the patches nearest to it — within a patch's side: a polygon on no data, whose
        own patches hold none, gets none from the data beside it)."""
        import shapely

        features = torch.cat([self.cache[b][0] for b in boxes])
        centres = np.concatenate([self.cache[b][1] for b in boxes])
        if not len(centres):
            return np.zeros((0, 0), np.float32)
        inside = shapely.contains_xy(geom, centres[:, 1], centres[:, 0])
        if not inside.any():
            distance = shapely.distance(geom, shapely.points(centres[:, 1], centres[:, 0]))
            minx, miny, maxx, maxy = geom.bounds
            # the patch covering it reaches half a side (a corner: half a diagonal, for a polygon within one)
            reach = self.patch / (2 ** 0.5 if max(maxx - minx, maxy - miny) <= self.patch else 2)
            inside = (distance <= distance.min() + 1e-6) & (distance <= reach + 1e-6)
        return features[torch.from_numpy(inside)].numpy()


def place_labels(source: RasterSource, prompts: PromptSet, geoms: list, values: list[str], crs: str | None
                 ) -> tuple[list[tuple[int, object, Box]], dict[str, int]]:
    """The labels that can teach — (class index, polygon on the working grid, its pixel box) for each —
    and the others counted by why they are left out (a label naming no class, a point, outside the
    raster). An InputError naming the reason when no label can teach: the API checks this before it
    accepts a teach job. `geoms` are in `crs` (None: the raster's); `values` name classes (any synonym)."""
    grid = source.grid
    skipped: dict[str, int] = {}
    placed: list[tuple[int, object, Box]] = []
    unknown: list[str] = []  # labels naming no class

    def skip(why: str) -> None:
        skipped[why] = skipped.get(why, 0) + 1

    kinds = {g.geom_type for g in geoms if g is not None and not g.is_empty}
    if kinds and not kinds & {"Polygon", "MultiPolygon"}:
        raise InputError(f"the labels are {' and '.join(sorted(k.lower() for k in kinds))}s, not polygons: draw each "
                         f"label as a polygon around what it names")
    for geom, value in zip(geoms, values):
        c = prompts.index_of(value) if value else None
        if c is None:
            skip(value or "(empty)")
            unknown.append(value or "(empty)")
            continue
        if geom is None or geom.is_empty:
            skip(f"{value} (an empty polygon)")
            continue
        if geom.geom_type not in ("Polygon", "MultiPolygon"):
            skip(f"{value} (a {geom.geom_type.lower()}, not a polygon)")
            continue
        pixel_geom = _placed(source, geom, crs)
        if pixel_geom is None:
            skip(f"{value} (outside the raster)")
            continue
        minx, miny, maxx, maxy = pixel_geom.bounds
        x0, y0 = max(0, int(np.floor(minx))), max(0, int(np.floor(miny)))
        x1, y1 = min(grid.width, int(np.ceil(maxx))), min(grid.height, int(np.ceil(maxy)))
        if x1 <= x0 or y1 <= y0:
            skip(f"{value} (outside the raster)")
            continue
        placed.append((c, pixel_geom, Box(y0, x0, y1 - y0, x1 - x0)))
    if not placed:
        raise InputError(_why_none_teach(skipped, unknown, prompts, crs))
    return placed, skipped


def _why_none_teach(skipped: dict[str, int], unknown: list[str], prompts: PromptSet, crs: str | None) -> str:
    if not skipped:
        return "no labels given: draw polygons around examples of the classes"
    if all(why.endswith("(outside the raster)") for why in skipped):
        return (f"no label overlaps the raster (labels in {crs or 'the raster CRS'}; a GeoJSON without a CRS "
                f"is read as WGS 84 longitude, latitude)")
    classes = ", ".join(prompts.labels[:20]) + (", ..." if len(prompts.labels) > 20 else "")
    if len(unknown) == sum(skipped.values()):
        names = sorted({name_key(n): " ".join(n.split()) for n in reversed(unknown)}.values())  # (each once)
        return (f"no label names a class: the labels say {', '.join(names[:10])}{', ...' if len(names) > 10 else ''}; "
                f"the classes are {classes}")
    return f"no label can teach (the classes are {classes}): {_reasons(skipped)}"


def _reasons(skipped: dict[str, int]) -> str:
    shown = [f"{why} ×{n}" if n > 1 else why for why, n in list(skipped.items())[:10]]
    return ", ".join(shown) + (", ..." if len(skipped) > 10 else "")


def teach(segmenter: Segmenter, source: RasterSource, geoms: list, values: list[str], crs: str | None,
          made: dict | None = None, seed: int = 0) -> TaughtClasses:
    """Taught classes from polygons (`geoms`, in `crs` or the raster's when None) whose label (`values`)
    names one of the segmenter's classes (any of its synonyms, case-insensitive)."""
    prompts = segmenter.prompts
    crops = CropGrid(source.grid.height, source.grid.width, segmenter.crop, segmenter.stride)
    placed, skipped = place_labels(source, prompts, geoms, values, crs)

    def skip(why: str) -> None:
        skipped[why] = skipped.get(why, 0) + 1

    plan = [(c, pixel_geom, choose_crops(crops.touching(box), pixel_geom)) for c, pixel_geom, box in placed]
    computed = CropFeatures(segmenter, source)
    computed.compute([b for *_, boxes in plan for b in boxes])
    rng = np.random.default_rng(seed)
    features: dict[int, list[np.ndarray]] = {}
    for c, pixel_geom, boxes in plan:
        samples = computed.inside(boxes, pixel_geom)
        if len(samples) > MAX_SAMPLES_PER_POLYGON:
            samples = samples[np.sort(rng.choice(len(samples), MAX_SAMPLES_PER_POLYGON, replace=False))]
        if len(samples):
            features.setdefault(c, []).append(samples)
        else:  # its pixels hold no data
            skip(f"{prompts.classes[c].label} (on no data)")
    few = [c for c, polys in features.items() if sum(len(p) for p in polys) < MIN_SAMPLES]
    for c in few:
        skip(f"{prompts.classes[c].label} (under {MIN_SAMPLES} patches: draw its labels larger)")
    if len(few) == len(features):
        raise InputError(f"no class has the {MIN_SAMPLES} labelled patches it needs: {_reasons(skipped)}")
    record = {"raster": str(source.path), "working_gsd_m": source.working_gsd, "crops": len(computed.cache),
              "bands": list(source.bands), "band_count": source.dataset.count,
              "template_set": segmenter.options.template_set, "global_bias": segmenter.options.global_bias,
              "skipped_labels": skipped, **(made or {})}
    return TaughtClasses.learn(segmenter.model, prompts, features, segmenter.options.template_set, record,
                               text=None if segmenter.taught is not None else segmenter.text)


def teach_from_file(segmenter: Segmenter, source: RasterSource, labels: str, field: str) -> TaughtClasses:
    """`teach` with the polygons of a vector file and its `field`."""
    geoms, values, crs = read_labels(labels, field)
    return teach(segmenter, source, geoms, values, crs, {"labels": str(labels), "field": field})
