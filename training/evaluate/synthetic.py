"""Score a checkpoint on held-out synthetic aerial scenes (`training.data.synthetic`), through the engine
as a user runs it: `segment` on each scene's GeoTIFF (mIoU against the exact label raster) and region
labelling of every object box (top-1 accuracy against its category).

It is the quick check that a training set-up learns (tests, smoke runs), not a benchmark. Class names
go through stage 2's own phrase "a satellite image of {}" (template set `region`) by default: a tiny
network trained from scratch on a few hundred captions knows only the phrasings it saw, unlike CLIP,
so prompt ensembles would measure its text generalisation rather than the training.

    from training.evaluate.synthetic import score_checkpoint
    score_checkpoint("runs/stage2/FarSLIP2_tiny-vit-16.pt", "heldout/")   # a write_scene_dataset folder
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import rasterio

from engine.dense import InferenceOptions, Segmenter
from engine.dense.scenes import SceneClassifier
from engine.geo.pipeline import RasterJob, segment_raster
from engine.geo.regions import Region
from engine.geo.scenes import label_regions
from engine.geo.source import RasterSource
from engine.models import load_model
from training.data.synthetic import SCENE_CLASSES
from training.evaluate.metrics import ConfusionMatrix

def score_checkpoint(model: str, scenes: str | Path, device: str = "cpu", template_set: str = "region") -> dict:
    """{'miou', 'iou' per class, 'region_accuracy', 'regions'} of a checkpoint on a scene folder."""
    scenes = Path(scenes)
    loaded = load_model(str(model), device=device)
    classes = "; ".join(SCENE_CLASSES)
    segmenter = Segmenter(loaded, classes, InferenceOptions(template_set=template_set))
    classifier = SceneClassifier(loaded, classes, template_set=template_set)
    records = {Path(r["global_filepath"]).stem: r
               for r in json.loads((scenes / "mgrs" / "text_info.json").read_text(encoding="utf-8"))}
    confusion = ConfusionMatrix(len(SCENE_CLASSES))
    correct = total = 0
    with tempfile.TemporaryDirectory() as out:
        for tif in sorted((scenes / "geotiff").glob("*.tif")):
            if tif.stem.endswith("_label"):
                continue
            summary = segment_raster(RasterJob(str(tif), out, polygons=False), segmenter)
            with rasterio.open(Path(out) / summary["files"]["classes"]) as pred, \
                    rasterio.open(tif.with_name(tif.stem + "_label.tif")) as truth:
                confusion.update(truth.read(1), pred.read(1))
            objects = records[tif.stem]["segment"]
            if objects:
                regions = [Region(bbox=(o["bbox"]["x1"], o["bbox"]["y1"], o["bbox"]["x2"], o["bbox"]["y2"]))
                           for o in objects]
                with RasterSource(str(tif)) as source:
                    labels = label_regions(source, regions, classifier, crs="pixel")
                correct += sum(lab["best"] == o["category"] for lab, o in zip(labels, objects))
                total += len(objects)
    iou = confusion.iou()
    return {"miou": float(confusion.miou()), "iou": {c: float(v) for c, v in zip(SCENE_CLASSES, iou)},
            "region_accuracy": correct / total if total else float("nan"), "regions": total}


