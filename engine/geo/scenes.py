"""Image-level classification over a raster: labelling given regions, and a scene grid.

    label_regions(source, regions, classifier)            → probabilities per region (synchronous, small)
    classify_grid(GridJob(...), classifier)               → <name>_grid.gpkg + <name>_grid_summary.json

Grid cells are squares of `cell_m` metres (or `cell_px` source pixels without a CRS) tiling the
area from its top-left corner without overlap; the last column and row are clipped to the raster
(their polygons are the clipped rectangles, so cell areas add up to the raster's). With a mask (selected
polygons), only the cells it covers part of are classified, and pixels outside it count as no data. A
cell with less than half its pixels (inside the raster) valid gets no class; so does a region with less than half its
pixels (inside its polygon; those outside the raster count as no data) valid — one rule, `with_data`.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely

from engine import __version__
from engine.dense.scenes import SceneClassifier
from engine.errors import Cancelled, InputError
from engine.geo.colours import class_colours, hex_colour
from engine.geo.pipeline import ProgressFn, publish_summary
from engine.geo.workdirs import moving, publish_together, work_folder
from engine.geo.raster_names import raster_stem
from engine.geo.regions import (MAX_REGIONS, Region, read_cells, read_region, region_valid_fraction, tile_cells,
                                to_pixel_geometry)
from engine.geo.source import RasterSource
from engine.geo.vectors import write_features

MIN_VALID_FRACTION = 0.5


def with_data(valid_fractions) -> np.ndarray:
    """Which cells or regions get a class (bool per item): those with at least MIN_VALID_FRACTION of
    their pixels valid. The one rule for grid cells and labelled regions; the others get no class."""
    return np.asarray(valid_fractions, dtype=np.float64) >= MIN_VALID_FRACTION


def label_regions(source: RasterSource, regions: list[Region], classifier: SceneClassifier,
                  crs: str | None = None) -> list[dict]:
    """Class probabilities of each region, cropped and encoded on its own (the stage-2 alignment), and
    its valid fraction. A region under half valid gets no class: best, score and probabilities None."""
    if not regions:
        raise InputError("no regions given")
    if len(regions) > MAX_REGIONS:
        raise InputError(f"{len(regions)} regions given; at most {MAX_REGIONS} per call")
    size = classifier.model.image_size
    geoms = [to_pixel_geometry(source, r, crs) for r in regions]
    crops = [read_region(source, g, size) for g in geoms]
    fractions = [region_valid_fraction(source, g) for g in geoms]
    probs = classifier.classify(crops).cpu().numpy()
    order = np.argsort(-probs, axis=1)
    labels = []
    for i, (fraction, has_class) in enumerate(zip(fractions, with_data(fractions))):
        label = {"index": i, "best": None, "score": None, "probabilities": None, "valid_fraction": fraction}
        if has_class:
            label.update(best=classifier.classes[int(order[i, 0])], score=float(probs[i, order[i, 0]]),
                         probabilities={classifier.classes[k]: float(probs[i, k]) for k in order[i]})
        labels.append(label)
    return labels


@dataclass
class GridJob:
    input: str
    out_dir: str
    cell_m: float | None = None
    cell_px: float | None = None
    bands: tuple[int, int, int] | None = None
    window: tuple[int, int, int, int] | None = None
    bbox: tuple[float, float, float, float] | None = None
    bbox_crs: str | None = None
    nodata: float | None = None  # as `segment`'s --nodata
    mask_wkt: str | None = None  # only cells meeting this (Multi)Polygon; outside it is no data
    mask_crs: str | None = None  # its CRS (default: the raster's)
    name: str | None = None


def grid_paths(job: GridJob) -> dict[str, Path]:
    stem = job.name or raster_stem(job.input)
    out = Path(job.out_dir)
    return {"grid": out / f"{stem}_grid.gpkg", "summary": out / f"{stem}_grid_summary.json"}


def cell_size_px(source: RasterSource, cell_m: float | None, cell_px: float | None) -> tuple[float, float]:
    """(source columns, source rows) of a cell: `cell_px` pixels a side, or `cell_m` metres on the ground
    (as many columns and rows as that is wide and tall where pixels are not square on the ground)."""
    if cell_px is not None:
        if not math.isfinite(cell_px) or cell_px < 8:  # NaN passed `< 8`, inf made one cell of an infinite size
            raise InputError("cells must be a finite number of pixels, at least 8")
        return float(cell_px), float(cell_px)
    if cell_m is None:
        raise InputError("give the cell size (--cell metres, or --cell-px pixels)")
    if not math.isfinite(cell_m) or cell_m <= 0:
        raise InputError("the cell size must be a positive, finite number of metres")
    if source.pixel_sides_m is None:
        placed = (f"is placed by {source.sensor_model.what} only (its pixels have no size in metres)"
                  if source.sensor_model is not None else "has no CRS")
        raise InputError(f"the raster {placed}: give the cell size in pixels (--cell-px)")
    size = (cell_m / source.pixel_sides_m[0], cell_m / source.pixel_sides_m[1])
    if min(size) < 8:
        coarse = max(source.pixel_sides_m)
        raise InputError(f"cells of {cell_m:g} m are {min(size):.2g} pixels of this raster's {coarse:.3g} m; "
                         f"cells must be at least 8 pixels: choose --cell {8 * coarse:.3g} or more")
    return size


def cell_polygon(source: RasterSource, cell) -> shapely.Polygon:
    t = source.transform
    x1, y1 = cell.x0 + cell.width, cell.y0 + cell.height
    corners = [t @ (cell.x0, cell.y0), t @ (x1, cell.y0), t @ (x1, y1), t @ (cell.x0, y1)]
    return shapely.Polygon(corners)


def classify_grid(job: GridJob, classifier: SceneClassifier, progress: ProgressFn | None = None,
                  cancel: threading.Event | None = None) -> dict:
    started = time.perf_counter()
    paths = grid_paths(job)
    with RasterSource(job.input, job.bands, None, job.window, job.bbox, job.bbox_crs, nodata=job.nodata,
                      mask_wkt=job.mask_wkt, mask_crs=job.mask_crs) as source:
        size = cell_size_px(source, job.cell_m, job.cell_px)
        cells = tile_cells(source, size)
        if source.mask_geometry is not None:  # the cells the mask covers some of, not its whole bounding box
            mask = source.mask_geometry
            shapely.prepare(mask)
            shapes = [cell_polygon(source, c) for c in cells]
            meets = shapely.intersects(mask, shapes) & ~shapely.touches(mask, shapes)
            cells = [c for c, keep in zip(cells, meets) if keep]
            if not cells:  # (a mask that only touches the area's edge)
                raise InputError("the mask covers no part of the raster area")
        with work_folder(job.out_dir) as work:
            rows, probs_all = [], []
            batch: list = []

            def flush() -> None:
                if not batch:
                    return
                if cancel is not None and cancel.is_set():
                    raise Cancelled("cancelled")
                probs = classifier.classify([rgb for _, rgb, _ in batch]).cpu().numpy()
                rows.extend((cell, frac) for cell, _, frac in batch)
                probs_all.append(probs)
                batch.clear()
                if progress is not None:
                    progress(len(rows), len(cells))

            for item in read_cells(source, cells, classifier.model.image_size):
                batch.append(item)
                if len(batch) >= classifier.batch_size:
                    flush()
            flush()
            probs = np.concatenate(probs_all)
            best = probs.argmax(axis=1)
            valid = with_data([frac for _, frac in rows])
            names = classifier.classes
            fields = {
                "row": np.array([c.row for c, _ in rows], dtype=np.int32),
                "col": np.array([c.col for c, _ in rows], dtype=np.int32),
                "class_index": np.ma.masked_array(best.astype(np.int32), mask=~valid),  # NULL: no class
                "class": np.array([names[b] if v else None for b, v in zip(best, valid)], dtype=object),
                "score": np.where(valid, probs[np.arange(len(best)), best], np.nan),
                "valid_fraction": np.array([f for _, f in rows]),
            }
            write_features(work / "grid.gpkg", [cell_polygon(source, c) for c, _ in rows], fields, source.crs, "grid")
            counts = np.bincount(best[valid], minlength=len(names))
            notes = list(source.notes)  # what was chosen or noticed about the raster
            if size[0] >= source.width and size[1] >= source.height:
                asked = f"{job.cell_m:g} m" if job.cell_px is None else f"{job.cell_px:g} px"
                notes.append(f"the cell ({asked}) is not smaller than the area ({source.width} x {source.height} "
                             f"px): the grid is one cell, the whole area classified as one scene")
            taught = classifier.segmenter.taught if classifier.segmenter is not None else None
            if taught is not None:  # (cells are read at their own scale: no working GSD to compare)
                notes += taught.differences(classifier.segmenter.options, None, source.bands, source.dataset.count)
            summary = {
                "farslip_version": __version__, "input": job.input, "model": classifier.model.name,
                "classes": [{"index": i, "name": n, "colour": hex_colour(colour), "cells": int(counts[i])}
                            for i, (n, colour) in enumerate(zip(names, class_colours(classifier.prompts.classes)))],
                "cells": len(rows), "cells_without_data": int((~valid).sum()),
                "cell_size_px": cells[0].size if cells else None,
                "cell_size_m": cells[0].size * source.pixel_sides_m[0] if cells and source.pixel_sides_m else None,
                "crs": source.crs.to_string() if source.crs else None,
                "notes": notes, "timing": {"total_s": round(time.perf_counter() - started, 3)},
                "files": {k: p.name for k, p in paths.items()},
            }
            publish_together(work, [moving(work / "grid.gpkg", paths["grid"]),
                                    (lambda: publish_summary(work, paths["summary"], summary), paths["summary"])], cancel)
            return summary
