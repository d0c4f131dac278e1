"""The driver of a batch run: plan every input's blocks, compute them on an executor, publish.

    summary = run_batch(["a.tif", "b.tif"], BatchSettings("out/"), segmenter, LocalExecutor(segmenter))

1. Each input is opened and probed (a missing, corrupt or non-raster input fails here, alone) and
   split into the same blocks and crops (windows) as `segment`; blocks that the manifest records
   as finished are skipped, and inputs whose outputs a run with the same settings made are not
   touched ("done earlier"); outputs made with other settings are recomputed and replaced
   (`replaces` in the input's status, `replaced` in the summary).
2. The blocks of all inputs go to the executor (in-process or Ray): windows, not files, are the
   unit of work, so one huge raster spreads over every worker. Each finished block is saved and
   recorded in the manifest at once.
3. When an input's last block is in, its blocks are assembled in `segment`'s order and written by
   `segment`'s own code (`segment_raster` with the blocks supplied), so its outputs equal
   `segment`'s pixel for pixel, under temporary names until complete.
4. Then the merged products (VRT mosaic, merged GeoPackage) and `batch_summary.json`.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from engine import __version__
from engine.batch.inputs import input_stamp, output_stems, source_key
from engine.batch.manifest import Manifest, check_state_folder, output_sources
from engine.batch.merge import MERGED_POLYGONS, MOSAIC, Product, write_merged
from engine.batch.units import RasterSpec, Unit
from engine.batch.work import plan_units, strips_from_numpy
from engine.errors import Cancelled, FarSLIPError, InputError
from engine.geo.blocks import assemble_block, block_boxes, sources_of, working_block
from engine.geo.pipeline import (DEFAULT_BLOCK, RasterJob, all_output_paths, check_new_outputs, output_paths,
                                 publish_summary, segment_raster)

SUMMARY = "batch_summary.json"
# the stems of the batch's own files, which no input's outputs may take
BATCH_STEMS = frozenset({SUMMARY.removesuffix("_summary.json"), MERGED_POLYGONS.removesuffix("_polygons.gpkg"),
                         MOSAIC.removesuffix("_classes")})


@dataclass
class BatchSettings:
    """What applies to every input of a batch run (as `segment`'s options)."""

    out_dir: str
    bands: tuple[int, int, int] | None = None
    gsd: float | None = None
    block: int = DEFAULT_BLOCK
    scores: bool = False
    polygons: bool = True
    min_area: float = 0.0
    simplify: float = 1.0
    nodata: float | None = None  # a value that is no data where every chosen band holds it (--nodata)


ProgressFn = Callable[[int, int], None]  # (windows done, windows to do) in this run


def _job(settings: BatchSettings, path: str, name: str) -> RasterJob:
    return RasterJob(input=path, out_dir=settings.out_dir, bands=settings.bands, gsd=settings.gsd,
                     block=settings.block, scores=settings.scores, polygons=settings.polygons,
                     min_area=settings.min_area, simplify=settings.simplify, name=name, nodata=settings.nodata,
                     overwrite=True)  # the manifest decides what is done: outputs of other settings are replaced


# what a finished block's saved contributions hold (see NumpyPart), on which working grid ("square": pixels
# square on the ground, from 2026-12; a run before it is not resumed on the new grid)
PARTS_FORMAT = "strips-square"


def run_settings(settings: BatchSettings, segmenter) -> dict:
    """Everything that changes a result: the manifest is kept per distinct value of this."""
    taught = {"taught": segmenter.taught.digest()} if segmenter.taught is not None else {}
    from engine.dense.taught import model_fingerprint

    return {"version": __version__, "parts": PARTS_FORMAT, "model": segmenter.model.name, "arch": segmenter.model.arch,
            "weights": model_fingerprint(segmenter.model),  # the same path may hold other weights on a rerun
            "prompts": segmenter.prompts.as_text(), "options": vars(segmenter.options), **taught,
            **{k: v for k, v in asdict(settings).items()
               if k != "out_dir" and not (k == "nodata" and v is None)}}  # (runs before nodata keep their hash)


def batch_names(inputs: list[str], out_dir: str | Path) -> list[str]:
    """Each input's output stem in this output folder: its name, or a hashed one where names repeat, name
    the batch's own files, or name outputs that an earlier run made there from another file."""
    return output_stems(inputs, BATCH_STEMS, output_sources(Path(out_dir)))


def check_batch_outputs(inputs: list[str], settings: BatchSettings) -> None:
    """Before any work: InputError when an output of the run would be one of its inputs (`a_classes.tif`
    beside `a.tif` in the output folder: the input would be lost), a file of the user's own (one no
    FarSLIP run made: no summary beside it, no batch record), a folder, or a name too long to write."""
    out = Path(settings.out_dir)
    check_state_folder(out)
    recorded = set(output_sources(out))
    planned = [(path, name, all_output_paths(_job(settings, path, name)))
               for path, name in zip(inputs, batch_names(inputs, out))]
    outputs = [p for _, _, paths in planned for p in paths.values()]
    check_new_outputs(outputs + [out / SUMMARY, out / MERGED_POLYGONS], inputs, overwrite=True, named=False)
    for path, name, paths in planned:
        if not paths["summary"].exists() and name not in recorded:
            stray = next((p for p in paths.values() if p.is_file()), None)
            if stray is not None:
                raise InputError(f"{stray} is in the output folder and no FarSLIP run of {path} made it: move it "
                                 f"aside, or choose another output folder (-o)")


def run_batch(inputs: list[str], settings: BatchSettings, segmenter, executor,
              progress: ProgressFn | None = None) -> dict:
    """Run every input; returns the run summary (also written as `batch_summary.json`)."""
    started = time.perf_counter()
    check_batch_outputs(inputs, settings)
    out = Path(settings.out_dir)
    names = batch_names(inputs, out)  # (before this run records anything)
    manifest = Manifest(out, run_settings(settings, segmenter))
    jobs = [_job(settings, path, name) for path, name in zip(inputs, names)]
    status: list[dict] = [{"input": path, "name": name, "status": "pending"} for path, name in zip(inputs, names)]
    todo: list[Unit] = []
    remaining: dict[int, int] = {}
    resumed_windows = 0
    for r, (path, job) in enumerate(zip(inputs, jobs)):
        manifest.track(job.name, input_stamp(path), source_key(path))  # (a changed file's blocks and outputs redone)
        outputs = output_paths(job)
        if outputs["summary"].exists():
            # done earlier: these settings made them, and every one is still there (one deleted: made again)
            if manifest.made_outputs(job.name) and all(p.exists() for p in outputs.values()):
                status[r]["status"] = "done earlier"
                continue
            status[r]["replaces"] = True  # outputs of a run with other settings (or of `segment`)
        try:
            source, units = plan_units(r, RasterSpec(path, settings.bands, settings.gsd, settings.nodata), segmenter, settings.block)
            source.close()
        except FarSLIPError as exc:
            status[r].update(status="failed", error=str(exc))
            continue
        done = manifest.done_blocks(job.name)
        resumed_windows += sum(done.values())
        missing = [u for u in units if (u.i, u.j) not in done]
        todo.extend(missing)
        remaining[r] = len(missing)

    total = sum(u.crops for u in todo)
    computed = 0
    failed: set[int] = set()
    t0 = time.perf_counter()
    # Publishing (assembly, COGs, polygons) runs beside the loop, so workers keep getting units.
    cancel = threading.Event()
    publishing: list[Future] = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="farslip-publish") as publisher:
        def publish(r: int) -> None:
            publishing.append(publisher.submit(_publish, jobs[r], status[r], segmenter, manifest, cancel))

        try:
            for r in [r for r, n in remaining.items() if n == 0]:
                publish(r)
            if progress is not None:
                progress(0, total)
            for unit, parts, error in executor.map(u for u in todo if u.raster not in failed):
                r = unit.raster
                if error is not None:
                    failed.add(r)
                    status[r].update(status="failed", error=error)
                    continue
                if r in failed:
                    continue
                manifest.save_block(jobs[r].name, unit.i, unit.j, parts, unit.crops)
                computed += unit.crops
                if progress is not None:
                    progress(computed, total)
                remaining[r] -= 1
                if remaining[r] == 0:
                    publish(r)
            for future in publishing:
                future.result()
        except BaseException:
            cancel.set()  # a publication in progress stops and removes its temporary folder
            raise
    compute_s = time.perf_counter() - t0

    products = []
    for r, job in enumerate(jobs):
        if status[r]["status"] not in ("done", "done earlier"):
            continue
        paths = output_paths(job)
        products.append(Product(job.name, paths["classes"], paths.get("polygons")))
        if status[r]["status"] == "done earlier":
            _read_result(status[r], paths["summary"])
    merged = [p.name for p in write_merged(out, products)] if products else []
    return _summary(out, status, merged, executor, total, computed, resumed_windows, compute_s,
                    time.perf_counter() - started)


def _publish(job: RasterJob, status: dict, segmenter, manifest: Manifest, cancel: threading.Event) -> None:
    """Assemble an input's blocks and write its outputs with `segment`'s code."""
    def blocks(source):
        h, w = source.grid.height, source.grid.width
        for i, row in enumerate(block_boxes(h, w, working_block(segmenter, job.block))):
            for j, core in enumerate(row):
                if cancel.is_set():
                    raise Cancelled("cancelled")
                parts = [strips_from_numpy(*part) for part in
                         (manifest.load_part(job.name, s, (i, j)) for s in sources_of(i, j)) if part is not None]
                logits = assemble_block(core, parts, len(segmenter.prompts.names), segmenter.model.device)
                yield core, logits, source.block_validity(core)

    manifest.disown(job.name)  # from here until published the folder's outputs belong to no settings
    try:
        summary = segment_raster(job, segmenter, cancel=cancel, blocks=blocks)
    except Cancelled:
        return
    except FarSLIPError as exc:
        status.update(status="failed", error=str(exc))
        return
    manifest.mark_published(job.name)
    status.update(status="done")
    _result_fields(status, summary)


def _read_result(status: dict, path: Path) -> None:
    try:
        _result_fields(status, json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        pass


def _result_fields(status: dict, summary: dict) -> None:
    status.update(crs=summary.get("crs"), bounds=summary.get("bounds"), windows=summary.get("crops"),
                  notes=summary.get("notes", []),
                  classes={c["name"]: {"pixels": c["pixels"], "area_m2": c["area_m2"]} for c in summary["classes"]})


def overlap_notes(status: list[dict]) -> list[str]:
    """A note when the inputs' areas overlap (tiles cut with a margin, a scene and its subset): the class
    areas add up each input's, so what lies in several inputs is counted once per input."""
    import shapely

    by_crs: dict[str, list] = {}
    for s in status:
        if s.get("bounds") and s.get("crs") and s["status"] in ("done", "done earlier"):
            by_crs.setdefault(s["crs"], []).append(shapely.box(*s["bounds"]))
    notes = []
    for crs, boxes in by_crs.items():
        total = sum(b.area for b in boxes)
        union = shapely.union_all(boxes).area
        if len(boxes) > 1 and total > union * (1 + 1e-9):
            notes.append(f"the inputs in {crs} overlap: {(total - union) / union:.1%} more area than they cover "
                         f"together is in several inputs, and the class areas count it once per input")
    return notes


def _summary(out: Path, status: list[dict], merged: list[str], executor, total: int, computed: int,
             resumed: int, compute_s: float, elapsed: float) -> dict:
    areas: dict[str, float] = {}
    for s in status:
        for name, c in s.get("classes", {}).items():
            areas[name] = areas.get(name, 0.0) + (c["area_m2"] or 0.0)
    summary = {
        "farslip_version": __version__,
        "executor": executor.description,
        "workers": executor.workers,
        "inputs": len(status),
        "done": sum(s["status"] == "done" for s in status),
        "done_earlier": sum(s["status"] == "done earlier" for s in status),
        "replaced": sum(bool(s.get("replaces")) and s["status"] == "done" for s in status),
        "failed": sum(s["status"] == "failed" for s in status),
        "windows": {"to_compute": total, "computed": computed, "resumed": resumed},
        "area_m2_per_class": {k: round(v, 3) for k, v in areas.items()},
        "notes": overlap_notes(status),
        "throughput": {"compute_s": round(compute_s, 3), "windows_per_s": round(computed / max(compute_s, 1e-9), 3),
                       "elapsed_s": round(elapsed, 3)},
        "merged": merged,
        "failures": [{"input": s["input"], "error": s["error"]} for s in status if s["status"] == "failed"],
        "per_input": status,
    }
    publish_summary(out, out / SUMMARY, summary)
    return summary
