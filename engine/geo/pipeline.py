"""Segment a raster of any size by typed class names and write geo-referenced outputs.

    segmenter = Segmenter(load_model("farslip2-vit-b-16"), "building,roof; road; tree")
    summary = segment_raster(RasterJob("ortho.tif", "out/"), segmenter)

Flow: RasterSource (bands, stretch, mask, working GSD) → raster_blocks (global crop grid, each crop
once) → per block: probabilities, class map, confidence → temporary working-grid GeoTIFFs →
(resampled to the source grid when the working GSD differs) → polygons + statistics in one pass →
COGs, GeoPackage and JSON summary, each renamed into place only when complete. Any failure or
interruption removes the temporary folder and leaves no partial output.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

from engine import __version__, config
from engine.dense import Segmenter
from engine.boxes import Box
from engine.errors import Cancelled, InputError
from engine.geo.blocks import block_boxes, count_crops, raster_blocks
from engine.geo.colours import class_colour, hex_colour
from engine.geo.polygons import PolygonWriter
from engine.geo.rasters import NODATA, SCORE_MAX, TiledRaster, class_tags, publish_cog, quantise, resample_to_grid
from engine.geo.source import RasterSource, linear_unit_metres

if TYPE_CHECKING:
    import torch

DEFAULT_BLOCK = 1024


@dataclass
class RasterJob:
    """Everything about one segmentation run except the model and the prompts."""

    input: str
    out_dir: str
    bands: tuple[int, int, int] | None = None
    gsd: float | None = None
    window: tuple[int, int, int, int] | None = None
    bbox: tuple[float, float, float, float] | None = None
    bbox_crs: str | None = None
    block: int = DEFAULT_BLOCK
    scores: bool = False
    polygons: bool = True
    min_area: float = 0.0
    simplify: float = 1.0
    name: str | None = None  # output file stem (default: the input's)
    mask_wkt: str | None = None  # only segment inside this (Multi)Polygon
    mask_crs: str | None = None  # its CRS (default: the raster's)


ProgressFn = Callable[[int, int], None]  # (crops done, crops total)
# (core box, mean logits [N, h, w], validity [h, w]) of each block of a source's working grid, row-major
BlocksFn = Callable[[RasterSource], Iterator[tuple[Box, "torch.Tensor", np.ndarray]]]


def output_paths(job: RasterJob) -> dict[str, Path]:
    stem = job.name or Path(job.input).stem
    out = Path(job.out_dir)
    paths = {"classes": out / f"{stem}_classes.tif", "summary": out / f"{stem}_summary.json"}
    if job.scores:
        paths["scores"] = out / f"{stem}_scores.tif"
    if job.polygons:
        paths["polygons"] = out / f"{stem}_polygons.gpkg"
    return paths


def make_workdir(out_dir: str) -> Path:
    """A temporary folder inside the output folder (same file system, so renames are atomic)."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".farslip-", dir=out))
    except OSError as exc:
        raise InputError(f"cannot write to output folder {out}: {exc.strerror or exc}") from None


def segment_raster(job: RasterJob, segmenter: Segmenter, progress: ProgressFn | None = None,
                   cancel: threading.Event | None = None, blocks: BlocksFn | None = None) -> dict:
    """Run one job; returns the summary (also written as JSON). Raises FarSLIPError on bad input.
    `blocks` supplies the blocks' logits when they were computed elsewhere (a batch run's workers);
    by default the segmenter computes them here (`raster_blocks`)."""
    started = time.perf_counter()
    if job.min_area < 0 or job.simplify < 0:
        raise InputError("--min-area and --simplify must not be negative")
    paths = output_paths(job)
    import rasterio

    with rasterio.Env(GDAL_CACHEMAX=config.gdal_cache_mb()), \
            RasterSource(job.input, job.bands, job.gsd, job.window, job.bbox, job.bbox_crs) as source:
        if job.mask_wkt:
            source.restrict_to(job.mask_wkt, job.mask_crs)
        work = make_workdir(job.out_dir)
        try:
            logits = (blocks(source) if blocks is not None
                      else raster_blocks(segmenter, source, job.block, progress, cancel))
            summary = _run(job, segmenter, source, work, paths, logits, cancel)
            summary["timing"]["total_s"] = round(time.perf_counter() - started, 3)
            _publish(work, paths, summary)
            return summary
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _run(job: RasterJob, segmenter: Segmenter, source: RasterSource, work: Path, paths: dict[str, Path],
         blocks: Iterator[tuple[Box, "torch.Tensor", np.ndarray]], cancel: threading.Event | None) -> dict:
    grid = source.grid
    classes = [{"index": i, "name": c.label, "synonyms": list(c.names), "colour": hex_colour(class_colour(c.names))}
               for i, c in enumerate(segmenter.prompts.classes)]
    colormap = {c["index"]: (*class_colour(segmenter.prompts.classes[c["index"]].names), 255) for c in classes}
    colormap[NODATA] = (0, 0, 0, 0)
    tags = class_tags(classes, {"FARSLIP_MODEL": segmenter.model.name, "FARSLIP_PROMPTS": segmenter.prompts.as_text(),
                                "FARSLIP_VERSION": __version__})
    transform = source.working_transform()
    class_raster = TiledRaster(work / "classes.tif", grid.height, grid.width, 1, transform, source.crs,
                               ["class"], tags, colormap)
    conf_raster = TiledRaster(work / "confidence.tif", grid.height, grid.width, 1, transform, source.crs,
                              ["confidence"], tags, scale=1 / SCORE_MAX)
    score_raster = (TiledRaster(work / "scores.tif", grid.height, grid.width, len(classes), transform, source.crs,
                                [c["name"] for c in classes], tags, scale=1 / SCORE_MAX) if job.scores else None)
    total_crops = count_crops(segmenter, grid.height, grid.width)
    t0 = time.perf_counter()
    try:
        for core, logits, valid in blocks:
            probs = segmenter.probabilities(logits)
            labels = segmenter.labels(probs).cpu().numpy()
            confidence = quantise(probs.max(dim=0).values.cpu().numpy())
            labels[~valid] = NODATA
            confidence[~valid] = NODATA
            class_raster.write(core, labels)
            conf_raster.write(core, confidence)
            if score_raster is not None:
                scores = quantise(probs.cpu().numpy())
                scores[:, ~valid] = NODATA
                score_raster.write(core, scores)
    finally:
        for raster in (class_raster, conf_raster, score_raster):
            if raster is not None:
                raster.close()
    model_s = time.perf_counter() - t0

    if grid.resampled:  # back onto the source grid
        for name in ("classes", "confidence", "scores"):
            if (work / f"{name}.tif").exists():
                resample_to_grid(work / f"{name}.tif", work / f"{name}_src.tif", source.height, source.width,
                                 source.transform)
                os.replace(work / f"{name}_src.tif", work / f"{name}.tif")

    counts, areas, n_polygons = _statistics_and_polygons(job, source, work, paths, [c["name"] for c in classes],
                                                         cancel)
    for c in classes:
        c["pixels"] = int(counts[c["index"]])
        c["area_m2"] = None if areas is None else round(float(areas[c["index"]]), 3)
    bounds = source.dataset.window_bounds(source.window)
    return {
        "farslip_version": __version__,
        "input": str(Path(job.input).resolve()) if not job.input.startswith("/vsi") else job.input,
        "model": segmenter.model.name, "arch": segmenter.model.arch,
        "prompts": segmenter.prompts.as_text(),
        "options": {k: v for k, v in vars(segmenter.options).items()},
        "classes": classes,
        "nodata_pixels": int(counts[NODATA]),
        "crs": source.crs.to_string() if source.crs else None,
        "bounds": list(bounds), "width": source.width, "height": source.height,
        "window": [int(source.window.col_off), int(source.window.row_off), source.width, source.height],
        "bands": list(source.bands),
        "source_gsd_m": source.source_gsd, "working_gsd_m": source.working_gsd,
        "working_size": [grid.width, grid.height],
        "crops": total_crops, "polygons": n_polygons,
        "timing": {"segmentation_s": round(model_s, 3), "crops_per_s": round(total_crops / max(model_s, 1e-9), 2)},
        "files": {k: p.name for k, p in paths.items()},
    }


def _statistics_and_polygons(job: RasterJob, source: RasterSource, work: Path, paths: dict[str, Path],
                             class_names: list[str], cancel: threading.Event | None):
    """One pass over the source-grid class raster: pixel counts, areas per class, polygons."""
    import rasterio
    from rasterio.windows import Window

    counts = np.zeros(256, dtype=np.int64)
    writer = None
    if job.polygons:
        writer = PolygonWriter(work / "polygons.gpkg", source.transform, source.crs, source.height, source.width,
                               class_names, job.simplify, job.min_area)
    row_area = _row_pixel_area(source)
    areas = None if row_area is None else np.zeros(256)
    with rasterio.open(work / "classes.tif") as cls_ds, rasterio.open(work / "confidence.tif") as conf_ds:
        for row in block_boxes(source.height, source.width, max(job.block, 512)):
            for core in row:
                if cancel is not None and cancel.is_set():
                    raise Cancelled("cancelled")
                window = Window(core.x, core.y, core.w, core.h)
                labels = cls_ds.read(1, window=window)
                counts += np.bincount(labels.ravel(), minlength=256)
                if areas is not None:
                    per_row = np.stack([np.bincount(r, minlength=256) for r in labels])
                    areas += (per_row * row_area[core.y:core.y + core.h, None]).sum(axis=0)
                if writer is not None:
                    writer.add_block(core, labels, conf_ds.read(1, window=window))
    n_polygons = writer.close() if writer is not None else 0
    return counts, areas, n_polygons


def _row_pixel_area(source: RasterSource) -> np.ndarray | None:
    """Area in m² of one source pixel on each row (rows differ on geographic CRSs), None without CRS."""
    crs, t = source.crs, source.transform
    if crs is None:
        return None
    if crs.is_geographic:
        from pyproj import Geod
        from shapely.geometry import box

        geod = Geod(ellps="WGS84")
        x0 = t.c
        areas = []
        for r in range(source.height):
            y_top = t.f + r * t.e
            areas.append(abs(geod.geometry_area_perimeter(box(x0, y_top + t.e, x0 + t.a, y_top))[0]))
        return np.asarray(areas)
    unit = linear_unit_metres(crs)
    return np.full(source.height, abs(t.a * t.e) * unit * unit)


def _publish(work: Path, paths: dict[str, Path], summary: dict) -> None:
    """Move every finished product into place; the summary (the completion marker) goes last."""
    publish_cog(work / "classes.tif", paths["classes"], "MODE")
    if "scores" in paths:
        publish_cog(work / "scores.tif", paths["scores"], "AVERAGE")
    if "polygons" in paths:
        os.replace(work / "polygons.gpkg", paths["polygons"])
    publish_summary(work, paths["summary"], summary)


def publish_summary(work: Path, path: Path, summary: dict) -> None:
    """Write the JSON summary (every job's completion marker) atomically, through a partial file in `work`."""
    partial = work / f".{path.name}.partial"
    partial.write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(partial, path)
