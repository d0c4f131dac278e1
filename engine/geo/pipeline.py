"""Segment a raster of any size by typed class names and write geo-referenced outputs.

    segmenter = Segmenter(load_model("farslip2-vit-b-16"), "building,roof; road; tree")
    summary = segment_raster(RasterJob("ortho.tif", "out/"), segmenter)

Flow: RasterSource (bands, stretch, mask, working GSD) → raster_blocks (global crop grid, each crop
once; beside a GPU the next blocks are read in background threads) → per block on the model's
device: probabilities, class map, confidence, scores as uint8, no data where invalid, put back on the
source grid and counted per class → class/score GeoTIFFs with their overviews, polygons and
statistics written in the same pass (beside a GPU by a writer thread, while the next block is
computed; beside a CPU in line, see `engine.config.write_threads`) → COGs, GeoPackage
and JSON summary, each renamed into place only when complete. Any failure or interruption removes
the temporary folder and leaves no partial output. The summary's `timing` says where the time went.

Outputs of an earlier run under the same name: refused unless `overwrite`; with it, all of them
(including products this run does not make, e.g. polygons before `--no-polygons`) are put aside just
before the new ones are moved into place and removed once all are, or put back if they cannot all be
(`publish_together`), so one name never holds two runs' outputs.
"""

from __future__ import annotations

import json
import os
import threading
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator


from engine import __version__, config
from engine.boxes import Box
from engine.dense import Segmenter
from engine.dense.transfer import download
from engine.errors import Cancelled, InputError
from engine.geo.background import BackgroundWriter, WaitClock
from engine.geo.blocks import count_crops, raster_blocks
from engine.geo.colours import class_colours, hex_colour
from engine.geo.products import SegmentationProducts, on_source_grid, scored_block
from engine.geo.raster_names import is_gdal_name, raster_stem
from engine.geo.rasters import NODATA, class_tags, gdal_env, publish_cog
from engine.geo.source import RasterSource
from engine.geo.validity import BlockValidity
from engine.geo.workdirs import moving, publish_together, work_folder

if TYPE_CHECKING:
    import torch

DEFAULT_BLOCK = 1024  # a batch run's unit of work (`segment` itself: see engine.geo.blocks.default_block)


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
    block: int | None = None  # working-grid block side; None: 1024 on a CPU, 2048 on a GPU
    scores: bool = False
    polygons: bool = True
    min_area: float = 0.0
    simplify: float = 1.0
    name: str | None = None  # output file stem (default: the input's)
    mask_wkt: str | None = None  # only segment inside this (Multi)Polygon
    mask_crs: str | None = None  # its CRS (default: the raster's)
    nodata: float | None = None  # a value that is no data where every chosen band holds it (--nodata)
    overwrite: bool = False  # replace an earlier run's outputs under this name (else refuse to start)


ProgressFn = Callable[[int, int], None]  # (crops done, crops total)
# (core box, mean logits [N, h, w], its validity) of each block of a source's working grid, row-major
BlocksFn = Callable[[RasterSource], Iterator[tuple[Box, "torch.Tensor", BlockValidity]]]


def output_paths(job: RasterJob) -> dict[str, Path]:
    stem = job.name or raster_stem(job.input)
    out = Path(job.out_dir)
    paths = {"classes": out / f"{stem}_classes.tif", "summary": out / f"{stem}_summary.json"}
    if job.scores:
        paths["scores"] = out / f"{stem}_scores.tif"
    if job.polygons:
        paths["polygons"] = out / f"{stem}_polygons.gpkg"
    return paths


def all_output_paths(job: RasterJob) -> dict[str, Path]:
    """Every product a run under this job's name may write, whether or not this job writes it."""
    stem = job.name or raster_stem(job.input)
    out = Path(job.out_dir)
    return {"classes": out / f"{stem}_classes.tif", "scores": out / f"{stem}_scores.tif",
            "polygons": out / f"{stem}_polygons.gpkg", "summary": out / f"{stem}_summary.json"}


MAX_NAME_BYTES = 255  # the longest file name common file systems take


def check_outputs(job: RasterJob) -> None:
    """`check_new_outputs` for every product a run under this job's name may write."""
    check_new_outputs(all_output_paths(job).values(), [job.input], job.overwrite)


def check_new_outputs(paths, inputs, overwrite: bool = False, named: bool = True) -> None:
    """An InputError when outputs cannot be written as named: a file name too long for the file system,
    the path of one of the `inputs` (the run would destroy it: refused even with --overwrite), a folder,
    or — unless `overwrite` — an earlier run's output (no command replaces a result silently). `named`:
    the command takes --name (the fixes offered name it)."""
    paths = [Path(p) for p in paths]
    or_name = " or --name" if named else ""
    files = _FileIdentities([source for source in inputs if not is_gdal_name(str(source))])
    for path in paths:
        size = len(os.fsencode(path.name))
        if size > MAX_NAME_BYTES:
            shorter = "pass a shorter --name" if named else "give the input a shorter name"
            raise InputError(f"the output file name {path.name[:40]}… is {size} bytes long and file systems take at "
                             f"most {MAX_NAME_BYTES}: {shorter}")
        source = files.find(path)
        if source is not None:
            raise InputError(f"{path} would replace the input raster {source}: choose another output folder "
                             f"(-o){or_name}")
        if path.is_dir():
            raise InputError(f"{path} is a folder, where the run writes a file: move it aside, or choose another "
                             f"output folder (-o){or_name}")
    existing = [p for p in paths if p.exists()]
    if existing and not overwrite:
        raise InputError(f"{existing[0]} and the other outputs of an earlier run are in the output folder: "
                         f"pass --overwrite to replace them, or choose another output folder or --name")


class _FileIdentities:
    """Which of some files a path names, however spelled (resolved), or through a hard link or another
    mount of it (device and inode): each file looked up once, so checking n outputs against n inputs
    takes time in n, not n² (10,000 tiles took hours before the first crop)."""

    def __init__(self, files):
        self.by_path = {Path(f).resolve(): f for f in files}
        self.by_inode = {}
        for resolved, f in self.by_path.items():
            try:
                st = resolved.stat()
            except OSError:  # (missing: reported when it is read)
                continue
            self.by_inode.setdefault((st.st_dev, st.st_ino), f)

    def find(self, path: Path):
        """The file `path` names, or None."""
        resolved = path.resolve()
        if resolved in self.by_path:
            return self.by_path[resolved]
        try:
            st = resolved.stat()
        except OSError:
            return None
        return self.by_inode.get((st.st_dev, st.st_ino))


def segment_raster(job: RasterJob, segmenter: Segmenter, progress: ProgressFn | None = None,
                   cancel: threading.Event | None = None, blocks: BlocksFn | None = None) -> dict:
    """Run one job; returns the summary (also written as JSON). Raises FarSLIPError on bad input.
    `blocks` supplies the blocks' logits when they were computed elsewhere (a batch run's workers);
    by default the segmenter computes them here (`raster_blocks`)."""
    started = time.perf_counter()
    if job.min_area < 0 or job.simplify < 0:
        raise InputError("--min-area and --simplify must not be negative")
    paths = output_paths(job)
    check_outputs(job)
    with gdal_env(), RasterSource(job.input, job.bands, job.gsd, job.window, job.bbox, job.bbox_crs,
                                  nodata=job.nodata, frame_from_reads=blocks is None, mask_wkt=job.mask_wkt,
                                  mask_crs=job.mask_crs) as source:
        with work_folder(job.out_dir) as work:
            read_wait = WaitClock()
            logits = (blocks(source) if blocks is not None
                      else raster_blocks(segmenter, source, job.block, progress, cancel, read_wait))
            with closing(logits):
                summary = _run(job, segmenter, source, work, paths, logits, cancel)
            timing = summary["timing"]
            timing["read_wait_s"] = round(read_wait.seconds, 3)
            check_outputs(job)  # another run may have published there meanwhile
            # the earlier run's outputs go, all of them (back if this run's cannot all be put in place)
            _publish(work, paths, summary, started, cancel, replaces=all_output_paths(job).values())
            return summary


def _run(job: RasterJob, segmenter: Segmenter, source: RasterSource, work: Path, paths: dict[str, Path],
         blocks: Iterator[tuple[Box, "torch.Tensor", BlockValidity]], cancel: threading.Event | None) -> dict:
    """Turn each block's logits into uint8 products on the model's device and hand them to the writer
    (`SegmentationProducts`), which writes them on the source grid — beside a GPU in a thread while
    the next block runs, beside a CPU in this thread (`config.write_threads`)."""
    grid = source.grid
    colours = class_colours(segmenter.prompts.classes)
    classes = [{"index": i, "name": c.label, "synonyms": list(c.names), "colour": hex_colour(colours[i])}
               for i, c in enumerate(segmenter.prompts.classes)]
    colormap = {i: (*colour, 255) for i, colour in enumerate(colours)}
    colormap[NODATA] = (0, 0, 0, 0)
    tags = class_tags(classes, {"FARSLIP_MODEL": segmenter.model.name, "FARSLIP_PROMPTS": segmenter.prompts.as_text(),
                                "FARSLIP_VERSION": __version__})
    products = SegmentationProducts(source, work, [c["name"] for c in classes], tags, colormap, job.scores,
                                    job.polygons, job.simplify, job.min_area)
    total_crops = count_crops(segmenter, grid.height, grid.width)
    write_wait = WaitClock()
    t0 = time.perf_counter()

    def write(rect: Box, pending) -> None:
        arrays = iter(pending.result())
        labels = next(arrays)
        confidence = next(arrays) if job.polygons else None
        scores = next(arrays) if job.scores else None
        products.add(rect, labels, confidence, scores, next(arrays))

    try:
        with BackgroundWriter(clock=write_wait, workers=config.write_threads(segmenter.model.device.type)) as writer:
            for core, logits, validity in blocks:
                # the confidence is the polygons' mean score
                outputs = scored_block(segmenter, logits, confidence=job.polygons, scores=job.scores)
                rect, outputs, counts = on_source_grid(source, core, outputs, validity, len(classes))
                if rect.h and rect.w:
                    writer.submit(write, rect, download(outputs + [counts]))
        model_s = time.perf_counter() - t0
        if cancel is not None and cancel.is_set():
            raise Cancelled("cancelled")
        source.check_frame_from_reads()
        t1 = time.perf_counter()
        counts, areas, n_polygons = products.close(cancel)
        finish_s = time.perf_counter() - t1
    finally:
        products.release()
    for c in classes:
        c["pixels"] = int(counts[c["index"]])
        c["area_m2"] = None if areas is None else round(float(areas[c["index"]]), 3)
    notes = list(source.notes)
    if segmenter.taught is not None:
        notes += segmenter.taught.differences(segmenter.options, source.working_gsd, source.bands,
                                              source.dataset.count)
    if not any(c["pixels"] for c in classes):
        below = " or below the threshold" if segmenter.options.prob_threshold else ""
        notes.append(f"no pixel of the area got a class (all no data by the raster's nodata, masks or NaN{below}): "
                     f"every output pixel is no data")
    bounds = source.bounds
    return {
        "farslip_version": __version__,
        "input": job.input if is_gdal_name(job.input) else str(Path(job.input).resolve()),
        "model": segmenter.model.name, "arch": segmenter.model.arch,
        "prompts": segmenter.prompts.as_text(),
        "options": {k: v for k, v in vars(segmenter.options).items()},
        "classes": classes,
        "nodata_pixels": int(counts[NODATA]),
        "crs": source.crs.to_string() if source.crs else None,
        "bounds": list(bounds), "width": source.width, "height": source.height,
        "window": [int(source.window.col_off), int(source.window.row_off), source.width, source.height],
        "bands": list(source.bands), "nodata_value": source.nodata, "notes": notes,
        "source_gsd_m": source.source_gsd, "working_gsd_m": source.working_gsd,
        "working_size": [grid.width, grid.height],
        "crops": total_crops, "polygons": n_polygons,
        # segmentation_s: blocks computed and written (write_wait_s of it waiting for the writer thread,
        # or writing, where this thread writes);
        # finish_s: rasters closed and polygons merged; publish_s: COGs made and moved into place;
        # polygon_workers: processes that traced the polygons (1: the writer itself)
        "timing": {"segmentation_s": round(model_s, 3), "crops_per_s": round(total_crops / max(model_s, 1e-9), 2),
                   "write_wait_s": round(write_wait.seconds, 3), "finish_s": round(finish_s, 3),
                   "polygon_workers": products.polygons.workers if products.polygons is not None else 0},
        "files": {k: p.name for k, p in paths.items()},
    }


def _publish(work: Path, paths: dict[str, Path], summary: dict, started: float,
             cancel: threading.Event | None = None, replaces=()) -> None:
    """Move every finished product into place, all or nothing, in place of `replaces` (`publish_together`);
    the summary (the completion marker) goes last, with the time this took (`publish_s`) and the run's
    `total_s` (since `started`)."""
    t0 = time.perf_counter()

    def steps():
        yield lambda: publish_cog(work / "classes.tif", paths["classes"], "MODE"), paths["classes"]
        if "scores" in paths:
            yield lambda: publish_cog(work / "scores.tif", paths["scores"], "AVERAGE"), paths["scores"]
        if "polygons" in paths:
            yield moving(work / "polygons.gpkg", paths["polygons"])
        now = time.perf_counter()
        summary["timing"].update(publish_s=round(now - t0, 3), total_s=round(now - started, 3))
        yield lambda: publish_summary(work, paths["summary"], summary), paths["summary"]

    publish_together(work, steps(), cancel, replaces)


def publish_summary(work: Path, path: Path, summary: dict) -> None:
    """Write the JSON summary (every job's completion marker) atomically, through a partial file in `work`."""
    partial = work / f".{path.name}.partial"
    partial.write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(partial, path)
