"""OVSS evaluation with the engine's own dense inference (`engine.dense.Segmenter`).

`paper` preset, as published (RS-OVSS / SegEarth-OV configs: mmcv `Resize(scale=(448, 448),
keep_ratio=True)`, the label loaded after it and left at its size): each image resized to a 448 px
long side the way mmcv does it — scale = min(448/long, 448/short), size int(side × scale + 0.5),
cv2 INTER_LINEAR (bilinear, half-pixel centres, no antialiasing), back to uint8 — here with
`F.interpolate(bilinear, align_corners=False, antialias=False)` and rounding (within one grey level of
cv2's fixed-point arithmetic); 224/112 sliding crops, a crop under 224 px padded evenly on both sides
to a patch multiple (RS-OVSS `compute_padsize`); averaged cosine logits resized (bilinear) to the
label size; × 50, softmax over all names, max over synonyms, argmax. Other presets add the global
bias (the CLS row of the dense pass, as SegEarth-OV takes it) and the dataset's probability threshold
with its background class (SegEarth-OV's settings). Any preset can add the
learned feature up-sampler (`upsampler`: SimFeatUp JBU weights); such a run is named `<preset>+jbu`.

Resumable: the running confusion matrix and the names of the images done are saved to
`<out>/<dataset>_<preset>_state.npz` every few images; a rerun continues from there when the state was
made by the same model (a SHA-256 of its weights), dataset root and split, preset and options, with
the same image and label files (size and modification time), for images the rerun asks for (a run of
`--limit 2` continues into the full split; the other way round starts afresh). A state made any other
way is not resumed: the run starts afresh and says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine.dense import Segmenter, prepare_image, preset
from engine.dense.sliding import sliding_logits
from engine.errors import InputError
from engine.models import LoadedModel
from training.evaluate.identity import file_stamp, model_identity, settings_key
from training.evaluate.metrics import ConfusionMatrix
from training.evaluate.ovss_datasets import OVSSDataset, samples

LONG_SIDE = 448
SAVE_EVERY = 10
# how images are resized, padded and the global bias taken: part of a resume state's key, so a state
# saved under an earlier protocol (PIL's antialiased resize, bottom/right padding, the standard CLS)
# is not continued
PROTOCOL = "mmcv-cv2-linear-448/centre-pad/dense-cls"


def rescaled_size(h: int, w: int, long_side: int = LONG_SIDE) -> tuple[int, int]:
    """(height, width) mmcv's `imrescale(img, (long_side, long_side))` gives an h × w image: scale
    min(long/max(h, w), short/min(h, w)) with both sides `long_side`, each side int(side · scale + 0.5)."""
    scale = min(long_side / max(h, w), long_side / min(h, w))
    return max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))


def resize_long_side(image: np.ndarray, long_side: int = LONG_SIDE) -> np.ndarray:
    """uint8 [H, W, 3] → uint8 [h, w, 3] at `rescaled_size`: bilinear with half-pixel centres and no
    antialiasing (what cv2.resize INTER_LINEAR, mmcv's default, does), rounded to the nearest level
    (halves up). cv2 computes in 11-bit fixed point, so about one pixel value in eight differs from it
    by one grey level, none by more."""
    h, w = image.shape[:2]
    size = rescaled_size(h, w, long_side)
    if size == (h, w):
        return image
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32))  # a fresh (writable) float copy
    pixels = (pixels[..., None] if pixels.ndim == 2 else pixels).permute(2, 0, 1)[None]
    resized = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False, antialias=False)
    out = resized[0].permute(1, 2, 0).add_(0.5).floor_().clamp_(0, 255).to(torch.uint8).numpy()  # halves up, as cv2
    return out[..., 0] if image.ndim == 2 else out


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
    """Class indices at the label's size for one benchmark image. The logits are `Segmenter.logits`'
    (same crops, global bias and up-sampler) but with a small crop's padding split evenly on both
    sides, as the published evaluation pads (`pad="centre"`)."""
    s = segmenter
    logits = sliding_logits(s.model, prepare_image(resize_long_side(image), s.model.device), s.text, s.crop,
                            s.stride, s.batch_size, s.options.global_bias, upsampler=s.upsampler, pad="centre")
    logits = F.interpolate(logits[None], size=label_shape, mode="bilinear", align_corners=False)[0]
    return segmenter.labels(logits).cpu().numpy()


def evaluate_ovss(model: LoadedModel, dataset: OVSSDataset, root: str | Path, preset_name: str = "paper",
                  out_dir: str | Path | None = None, limit: int | None = None, progress=None,
                  upsampler: str | None = None, notice=None) -> dict:
    """mIoU etc. of `model` on `dataset`'s evaluation split; `notice(text)` hears a resume state that was
    not used (made with other settings)."""
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be at least 1 (got {limit})")
    segmenter = segmenter_for(model, dataset, preset_name, upsampler)
    run = run_name(preset_name, upsampler)
    pairs = dataset.pairs(root)[:limit]
    stamps = {image.name: f"{file_stamp(image)}|{file_stamp(label)}" for image, label in pairs}
    identity = model_identity(model)
    key = settings_key({"model": identity, "dataset": dataset.name, "root": str(Path(root).resolve()),
                        "split": [dataset.image_dir, dataset.label_dir], "classes": dataset.classes,
                        "run": run, "options": repr(segmenter.options), "protocol": PROTOCOL,
                        "upsampler": [upsampler, file_stamp(upsampler)] if upsampler else None})
    cm = ConfusionMatrix(len(dataset.classes))
    done: list[str] = []
    state = Path(out_dir) / f"{dataset.name}_{run}_state.npz" if out_dir else None
    if state is not None and state.exists():
        saved = _load_state(state)
        if saved is not None and saved["key"] == key and all(stamps.get(n) == s for n, s in saved["stamps"].items()):
            cm.matrix[:], cm.missed[:] = saved["matrix"], saved["missed"]
            done = list(saved["stamps"])
        elif notice is not None:
            notice(f"{state.name} was saved by a run with another model, dataset, preset, files or a larger "
                   f"--limit: not resumed, starting afresh")
    finished = set(done)
    for name, image, label in samples(dataset, root, limit):
        if name in finished:
            continue
        with torch.inference_mode():
            cm.update(label, predict(segmenter, image, label.shape))
        done.append(name)
        if progress is not None:
            progress(len(done), len(pairs))
        if state is not None and len(done) % SAVE_EVERY == 0:
            _save_state(state, cm, done, stamps, key)
    if state is not None:
        _save_state(state, cm, done, stamps, key)
    iou = cm.iou()
    return {"dataset": dataset.name, "preset": run, "model": model.name, "model_sha256": identity,
            "images": len(done), "units": "percent",
            "upsampler": Path(upsampler).name if upsampler else None,
            "miou": 100 * cm.miou(), "pixel_accuracy": 100 * cm.pixel_accuracy(),
            "per_class_iou": {c.split(",")[0]: (None if np.isnan(v) else 100 * float(v))
                              for c, v in zip(dataset.classes, iou)}}


def _load_state(path: Path) -> dict | None:
    """A saved state, or None when it is unreadable or from before states were tied to their settings."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            if "key" not in saved.files or "stamps" not in saved.files:
                return None
            done = [str(n) for n in saved["done"]]
            return {"key": str(saved["key"]), "matrix": saved["matrix"], "missed": saved["missed"],
                    "stamps": dict(zip(done, (str(s) for s in saved["stamps"])))}
    except (OSError, ValueError, KeyError):
        return None


def _save_state(path: Path, cm: ConfusionMatrix, done: list[str], stamps: dict[str, str], key: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.partial.npz")
    np.savez(partial, matrix=cm.matrix, missed=cm.missed, done=np.array(done, dtype=str),
             stamps=np.array([stamps[n] for n in done], dtype=str), key=np.array(key))
    partial.replace(path)


def published(table: str = "ovss") -> dict:
    return json.loads((Path(__file__).with_name("published.json")).read_text(encoding="utf-8"))[table]
