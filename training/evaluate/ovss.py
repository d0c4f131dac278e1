"""OVSS evaluation with the engine's own dense inference (`engine.dense.Segmenter`).

`paper` preset, as published: each image resized (bilinear, aspect kept) to a 448 px long side;
224/112 sliding crops; averaged cosine logits resized (bilinear) to the label size; × 50, softmax
over all names, max over synonyms, argmax. Other presets add the global bias and the dataset's
probability threshold with its background class (SegEarth-OV's settings). Any preset can add the
learned feature up-sampler (`upsampler`: SimFeatUp JBU weights); such a run is named `<preset>+jbu`.

Resumable: the running confusion matrix and the names of the images done are saved to
`<out>/<dataset>_<preset>_state.npz` every few images; a rerun continues from there.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from engine.dense import Segmenter, prepare_image, preset
from engine.models import LoadedModel
from training.evaluate.metrics import ConfusionMatrix
from training.evaluate.ovss_datasets import OVSSDataset, samples

LONG_SIDE = 448
SAVE_EVERY = 10


def resize_long_side(image: np.ndarray, long_side: int = LONG_SIDE) -> np.ndarray:
    h, w = image.shape[:2]
    scale = long_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))


def run_name(preset_name: str, upsampler: str | None = None) -> str:
    """What results and resume state are filed under: the preset, `+jbu` with an up-sampler."""
    return f"{preset_name}+jbu" if upsampler else preset_name


def segmenter_for(model: LoadedModel, dataset: OVSSDataset, preset_name: str,
                  upsampler: str | None = None) -> Segmenter:
    options = preset(preset_name).with_overrides(upsampler=upsampler)
    if preset_name != "paper":
        background = dataset.classes[dataset.background].split(",")[0]
        options = options.with_overrides(prob_threshold=dataset.threshold, background=background)
    return Segmenter(model, list(dataset.classes), options)


def predict(segmenter: Segmenter, image: np.ndarray, label_shape: tuple[int, int]) -> np.ndarray:
    """Class indices at the label's size for one benchmark image."""
    logits = segmenter.logits(prepare_image(resize_long_side(image), segmenter.model.device))
    logits = F.interpolate(logits[None], size=label_shape, mode="bilinear", align_corners=False)[0]
    return segmenter.labels(logits).cpu().numpy()


def evaluate_ovss(model: LoadedModel, dataset: OVSSDataset, root: str | Path, preset_name: str = "paper",
                  out_dir: str | Path | None = None, limit: int | None = None, progress=None,
                  upsampler: str | None = None) -> dict:
    segmenter = segmenter_for(model, dataset, preset_name, upsampler)
    run = run_name(preset_name, upsampler)
    cm = ConfusionMatrix(len(dataset.classes))
    done: list[str] = []
    state = Path(out_dir) / f"{dataset.name}_{run}_state.npz" if out_dir else None
    if state is not None and state.exists():
        saved = np.load(state, allow_pickle=False)
        cm.matrix[:], cm.missed[:] = saved["matrix"], saved["missed"]
        done = [str(n) for n in saved["done"]]
    finished = set(done)
    todo = [p for p in dataset.pairs(root)[:limit]]
    for name, image, label in samples(dataset, root, limit):
        if name in finished:
            continue
        with torch.inference_mode():
            cm.update(label, predict(segmenter, image, label.shape))
        done.append(name)
        if progress is not None:
            progress(len(done), len(todo))
        if state is not None and len(done) % SAVE_EVERY == 0:
            _save_state(state, cm, done)
    if state is not None:
        _save_state(state, cm, done)
    iou = cm.iou()
    return {"dataset": dataset.name, "preset": run, "model": model.name, "images": len(done), "units": "percent",
            "upsampler": Path(upsampler).name if upsampler else None,
            "miou": 100 * cm.miou(), "pixel_accuracy": 100 * cm.pixel_accuracy(),
            "per_class_iou": {c.split(",")[0]: (None if np.isnan(v) else 100 * float(v))
                              for c, v in zip(dataset.classes, iou)}}


def _save_state(path: Path, cm: ConfusionMatrix, done: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.partial.npz")
    np.savez(partial, matrix=cm.matrix, missed=cm.missed, done=np.array(done, dtype=str))
    partial.replace(path)


def published(table: str = "ovss") -> dict:
    return json.loads((Path(__file__).with_name("published.json")).read_text(encoding="utf-8"))[table]
