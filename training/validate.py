"""Zero-shot validation during training, after each epoch as the published code runs it on SkyScript's
validation CSV (`filepath`, `label`, `title`; images relative to the CSV's folder).

    python -m training.train --stage 1 ... --val-data skyscript/SkyScript_val_5K_filtered_by_CLIP_openai.csv

The network being trained is evaluated in place (eval mode, no gradient) through the evaluation code
(`training.evaluate.zero_shot`, the `rs` prompt templates), on the main rank: classification top-1/top-5
as `val/top1`, `val/top5`, and — when the CSV has a caption column (`title`, `caption`, `text`), as the
published validation reports — image↔text retrieval mean recall as `val/i2t_mean_recall`,
`val/t2i_mean_recall`. Class names come from `val_classnames` (one a line) or, when the label
column holds names rather than indices, from the CSV's sorted distinct labels.
"""

from __future__ import annotations

from pathlib import Path

import torch

from engine.errors import InputError


def check_validation_data(cfg) -> list[str] | None:
    """Before any training: an InputError when the validation CSV cannot serve (no 'label' column, class
    indices without `val_classnames`, a missing names file) — it was found out after the first epoch.
    The class names read from the CSV's labels; None when `val_classnames` names them."""
    from training.evaluate.zero_shot import read_csv

    rows = read_csv(cfg.val_data)
    if "label" not in rows[0]:
        raise InputError(f"{Path(cfg.val_data).name}: expected a 'label' column")
    if cfg.val_classnames:
        if not Path(cfg.val_classnames).is_file():
            raise InputError(f"val_classnames: no file {cfg.val_classnames}")
        return None
    labels = sorted({r["label"].strip() for r in rows})
    if all(label.isdigit() for label in labels):
        raise InputError("the validation CSV's labels are class indices: pass val_classnames=FILE (one name a line)")
    return labels


def classnames_file(cfg, out: Path) -> str:
    """`val_classnames`, else a file written into the run folder from the CSV's label names."""
    labels = check_validation_data(cfg)
    if labels is None:
        return cfg.val_classnames
    path = out / "val_classnames.txt"
    path.write_text("\n".join(labels) + "\n", encoding="utf-8")
    return str(path)


def zero_shot_validation(clip, arch: str, cfg, out: Path, device: torch.device, step: int) -> dict[str, float]:
    from engine.models import LoadedModel
    from training.evaluate.zero_shot import CAPTION_COLUMNS, evaluate_classification, evaluate_retrieval, read_csv

    names = classnames_file(cfg, out)
    was_training = clip.training
    clip.eval()
    try:
        # a name per step: caches keyed by the model never serve the previous epoch's text embeddings
        model = LoadedModel(clip=clip, name=f"training-step-{step}", arch=arch, device=device, dtype=torch.float32)
        result = evaluate_classification(model, cfg.val_data, names)
        record = {"val/top1": result["top1"], "val/top5": result["top5"], "val/images": result["images"]}
        if any(c in read_csv(cfg.val_data)[0] for c in CAPTION_COLUMNS):
            retrieval = evaluate_retrieval(model, cfg.val_data)
            record.update({"val/i2t_mean_recall": retrieval["i2t"]["mean_recall"],
                           "val/t2i_mean_recall": retrieval["t2i"]["mean_recall"]})
    finally:
        clip.train(was_training)
    return record
