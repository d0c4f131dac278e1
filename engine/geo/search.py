"""Text search over a raster: a similarity heat map and the top-k matching boxes.

    search_raster(SearchJob("ortho.tif", "out/", query="a swimming pool next to a house"), model)

- Heat map: the dense per-pixel cosine similarity between the image and the query, computed with the
  same blocked crop grid as `segment` (float32 COG on the source grid, `<name>_heatmap.tif`).
- Boxes: square cells of one model crop (half-overlapping), each encoded on its own (CLS) and scored
  by cosine with the query; the best `top_k` after non-maximum suppression (torchvision.ops.nms),
  written to `<name>_boxes.gpkg` and listed in the summary.
"""

from __future__ import annotations

import threading
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine import __version__
from engine.dense import InferenceOptions, Segmenter
from engine.dense.prompts import query_prompts
from engine.dense.scenes import SceneClassifier
from engine.errors import Cancelled, InputError
from engine.geo.blocks import raster_blocks
from engine.geo.pipeline import ProgressFn, publish_summary
from engine.geo.workdirs import moving, publish_together, work_folder
from engine.geo.raster_names import raster_stem
from engine.geo.rasters import TiledRaster, gdal_env, publish_cog
from engine.geo.regions import grid_cells, read_cells
from engine.geo.scenes import cell_polygon
from engine.geo.source import RasterSource
from engine.geo.vectors import write_features
from engine.models import LoadedModel

HEATMAP_NODATA = -2.0
QUERY_TEMPLATES = "name"  # a query is embedded as the user wrote it, in no template


@dataclass
class SearchJob:
    input: str
    out_dir: str
    query: str = ""
    top_k: int = 10
    gsd: float | None = None
    bands: tuple[int, int, int] | None = None
    window: tuple[int, int, int, int] | None = None
    bbox: tuple[float, float, float, float] | None = None
    bbox_crs: str | None = None
    nodata: float | None = None  # as `segment`'s --nodata
    block: int | None = None  # as `segment`'s
    mask_wkt: str | None = None  # only inside this (Multi)Polygon (boxes at least half inside it)
    mask_crs: str | None = None  # its CRS (default: the raster's)
    heatmap: bool = True
    name: str | None = None


def search_paths(job: SearchJob) -> dict[str, Path]:
    stem = job.name or raster_stem(job.input)
    out = Path(job.out_dir)
    paths = {"boxes": out / f"{stem}_boxes.gpkg", "summary": out / f"{stem}_search_summary.json"}
    if job.heatmap:
        paths["heatmap"] = out / f"{stem}_heatmap.tif"
    return paths


def search_raster(job: SearchJob, model: LoadedModel, progress: ProgressFn | None = None,
                  cancel: threading.Event | None = None) -> dict:
    from torchvision.ops import nms

    started = time.perf_counter()
    if not 1 <= job.top_k <= 1000:
        raise InputError("top_k must be between 1 and 1000")
    prompts = query_prompts(job.query)
    paths = search_paths(job)
    with gdal_env(), \
            RasterSource(job.input, job.bands, job.gsd, job.window, job.bbox, job.bbox_crs,
                         nodata=job.nodata, mask_wkt=job.mask_wkt, mask_crs=job.mask_crs) as source:
        with work_folder(job.out_dir) as work:
            if job.heatmap:
                _heatmap(job, model, prompts, source, work, progress, cancel)
            # boxes: one model crop per cell at the working resolution, half-overlapping
            scorer = SceneClassifier(model, prompts, template_set=QUERY_TEMPLATES)
            crop_px = (model.image_size * source.grid.scale_x, model.image_size * source.grid.scale_y)
            cells = grid_cells(source, crop_px, (crop_px[0] / 2, crop_px[1] / 2))
            embeddings, kept = [], []
            batch: list = []
            for item in read_cells(source, cells, model.image_size):
                if item[2] >= 0.5:
                    batch.append(item)
                if len(batch) >= scorer.batch_size:
                    embeddings.append(scorer.embed([rgb for _, rgb, _ in batch]))
                    kept.extend(cell for cell, _, _ in batch)
                    batch.clear()
                    if cancel is not None and cancel.is_set():
                        raise Cancelled("cancelled")
            if batch:
                embeddings.append(scorer.embed([rgb for _, rgb, _ in batch]))
                kept.extend(cell for cell, _, _ in batch)
            results = []
            if kept:
                scores = (torch.cat(embeddings) @ scorer.text.T)[:, 0].float().cpu()
                boxes = torch.tensor([[c.x0, c.y0, c.x0 + c.size, c.y0 + c.size_y] for c in kept], dtype=torch.float32)
                chosen = nms(boxes, scores, iou_threshold=0.3)[: job.top_k].tolist()
                for rank, i in enumerate(chosen, start=1):
                    poly = cell_polygon(source, kept[i])
                    results.append({"rank": rank, "score": float(scores[i]), "bounds": list(poly.bounds),
                                    "pixel_box": [float(kept[i].x0), float(kept[i].y0), float(kept[i].size),
                                                  float(kept[i].size_y)], "_geom": poly})
            fields = {"rank": np.array([r["rank"] for r in results], dtype=np.int32),
                      "score": np.array([r["score"] for r in results], dtype=np.float64),
                      "query": np.array([job.query] * len(results), dtype=object)}
            write_features(work / "boxes.gpkg", [r.pop("_geom") for r in results], fields, source.crs, "boxes")
            summary = {"farslip_version": __version__, "input": job.input, "model": model.name, "query": job.query,
                       "boxes": results, "crs": source.crs.to_string() if source.crs else None,
                       "working_gsd_m": source.working_gsd, "notes": list(source.notes),
                       "timing": {}, "files": {k: p.name for k, p in paths.items()}}

            def steps():
                if job.heatmap:
                    yield lambda: publish_cog(work / "heatmap.tif", paths["heatmap"], "AVERAGE"), paths["heatmap"]
                yield moving(work / "boxes.gpkg", paths["boxes"])
                summary["timing"]["total_s"] = round(time.perf_counter() - started, 3)
                yield lambda: publish_summary(work, paths["summary"], summary), paths["summary"]

            publish_together(work, steps(), cancel)
            return summary


def _heatmap(job, model, prompts, source, work, progress, cancel) -> None:
    """Dense cosine similarity to the query, block by block (the blocks of `segment`), put back on
    the source grid as each block is done, into `work`/heatmap.tif."""
    segmenter = Segmenter(model, prompts, InferenceOptions(template_set=QUERY_TEMPLATES))
    raster = TiledRaster(work / "heatmap.tif", source.height, source.width, 1, source.raster_transform, source.crs,
                         ["cosine similarity"], {"FARSLIP_QUERY": job.query}, dtype="float32", nodata=HEATMAP_NODATA,
                         sensor_model=source.raster_sensor_model)
    try:
        with closing(raster_blocks(segmenter, source, job.block, progress, cancel)) as blocks:
            for core, logits, validity in blocks:
                values = logits[0].float().cpu().numpy()
                rect, (values,) = source.put_back(core, validity, values, fill=HEATMAP_NODATA)
                raster.write(rect, values)
    finally:
        raster.close()
