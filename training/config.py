"""Training configuration: one dataclass, the published defaults of each stage, a recipe, a YAML/TOML
file and command-line overrides, in that order of precedence (defaults < recipe < file < flags).

    python -m training.train --stage 1 --data 'rs5m/{0000..0031}.tar' --config stage1.yaml --set lr=2e-6
    python -m training.train --stage 2 --print-config          # the effective settings, one JSON object

Recipes (`recipe=`): `published` (default) reproduces every effective setting of the published
training code (NJU-LHRS/FarSLIP: its README commands over `open_clip_train/config.py`); `revised`
changes four method choices: the active teacher's crop features detached (plain distillation),
an exact all-gather with gradient for the contrastive loss (the same gradient on any number of GPUs),
both Long-CLIP position tables trained, and objects with their own caption kept as their own positives.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from pathlib import Path

from engine.errors import InputError

TEACHER_MODES = ("active", "ema", "frozen")
OWN_CAPTION = ("exclude", "keep")
PRECISIONS = ("auto", "fp32", "amp", "amp_bf16")


@dataclass
class TrainConfig:
    stage: int = 1
    data: str = ""                       # stage 1: shard spec ('rs5m/{0000..0031}.tar'); stage 2: text_info.json
    data_root: str = ""                  # stage 2: image folder (default: beside text_info.json or its global_imgs/)
    samples: int = 0                     # stage 1: samples in the shards (0: count them)
    model: str = "openai:ViT-B-16"       # starting weights: release name, .pt path, openai:ARCH, random:ARCH
    arch: str = ""                       # architecture when `model` does not say (e.g. ViT-B-16)
    out: str = "runs/farslip"
    name: str = ""                       # checkpoint name (default FarSLIP{stage}_{arch})
    epochs: int = 1
    max_steps: int = 0                   # stop after this many optimiser steps (0: run all epochs)
    batch_size: int = 40                 # per rank
    lr: float = 1e-6
    weight_decay: float = 1.0
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup: int = 1000
    grad_clip: float = 0.0               # max global gradient norm (0: off)
    precision: str = "auto"              # auto: amp on CUDA, fp32 elsewhere
    seed: int = 0
    workers: int = 4                     # data-loading processes per rank
    # losses
    global_weight: float = 1.0
    distill_weight: float = 0.1
    region_weight: float = 1.0
    teacher: str = "active"              # stage 1: active | ema | frozen
    ema_momentum: float = 0.99
    max_boxes: int = 4                   # crops (stage 1) / objects (stage 2) per image
    crop_scale: tuple[float, float] = (0.3, 0.7)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    min_box: int = 64                    # stage 2: objects with area under min_box² px are dropped
    max_box: int = 1024                  # ... and over max_box² px
    multi_positive: bool = True
    long_clip: bool = False              # Long-CLIP text tower (248 positions), either stage
    caption_key: str = "global_caption"
    # method choices the recipes set (see the module docstring)
    recipe: str = "published"
    teacher_grad: bool = True            # stage 1, teacher "active": crop features keep their gradient
    gather_with_grad: bool = False       # contrastive loss: exact all-gather (True) or open_clip's (False)
    long_clip_frozen_pe: bool = True     # Long-CLIP from a 77-position start: stretched table frozen
    own_caption: str = "exclude"         # stage 2 objects with their own caption: exclude | keep
    # augmentation (of the global image and every object crop)
    color_jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)
    color_jitter_p: float = 0.0
    grayscale_p: float = 0.0
    # stage 1 shard stream
    shuffle_buffer: int = 5000
    shard_shuffle: bool = True
    # zero-shot validation at the end of each epoch (SkyScript-style CSV: filepath, label)
    val_data: str = ""
    val_classnames: str = ""             # class names, one a line (default: the CSV's label names)
    val_every: int = 1                   # epochs
    # bookkeeping
    log_every: int = 10
    save_every: int = 0                  # also save every N steps (0: only at epoch ends)
    keep_checkpoints: int = 2
    resume: str = "auto"                 # auto (latest in out/ if any) | never | PATH
    tensorboard: bool = True
    find_unused_parameters: bool = False

    def validate(self, need_data: bool = True) -> "TrainConfig":
        if self.stage not in (1, 2):
            raise InputError("--stage must be 1 or 2")
        if need_data and not self.data:
            raise InputError("no training data: pass --data")
        if self.recipe not in RECIPES:
            raise InputError(f"recipe must be one of {', '.join(RECIPES)}")
        if self.own_caption not in OWN_CAPTION:
            raise InputError(f"own_caption must be one of {', '.join(OWN_CAPTION)}")
        for name in ("color_jitter_p", "grayscale_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise InputError(f"{name} must be a probability in [0, 1]")
        if any(v < 0 for v in self.color_jitter) or self.color_jitter[3] > 0.5:
            raise InputError("color_jitter: four non-negative values (brightness, contrast, saturation, hue ≤ 0.5)")
        if self.teacher not in TEACHER_MODES:
            raise InputError(f"teacher must be one of {', '.join(TEACHER_MODES)}")
        if self.stage == 1 and self.teacher == "frozen" and self.global_weight > 0:
            # as the published code refuses it: the frozen start distils against a moving contrastive student
            raise InputError("teacher 'frozen' cannot be used with the global contrastive loss: set global_weight 0, "
                             "or use teacher 'active' or 'ema'")
        if self.precision not in PRECISIONS:
            raise InputError(f"precision must be one of {', '.join(PRECISIONS)}")
        for name in ("epochs", "batch_size", "max_boxes"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1")
        for name in ("lr", "weight_decay", "warmup", "grad_clip", "max_steps", "samples", "workers",
                     "global_weight", "distill_weight", "region_weight", "shuffle_buffer", "val_every"):
            if getattr(self, name) < 0:
                raise InputError(f"{name} must not be negative")
        if self.max_boxes > 64:
            raise InputError("max_boxes must be at most 64")
        if not 0 <= self.ema_momentum < 1:
            raise InputError("ema_momentum must be in [0, 1)")
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise InputError("crop_scale must be two fractions 0 < low <= high <= 1")
        if self.log_every < 1:
            raise InputError("log_every must be at least 1")
        return self

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


# Published defaults that differ between the stages; everything else is shared. Stage 1 uses the
# multi-crop transform (resize only), stage 2 open_clip's train transform with the colour augmentation.
STAGE_DEFAULTS: dict[int, dict] = {
    1: dict(lr=1e-6, weight_decay=1.0, epochs=1, warmup=1000, batch_size=40, teacher="active"),
    2: dict(lr=4e-9, weight_decay=1.0, epochs=10, warmup=250, batch_size=40, long_clip=False,
            color_jitter_p=0.8, grayscale_p=0.2),
}

RECIPES: dict[str, dict] = {
    "published": {},
    "revised": dict(teacher_grad=False, gather_with_grad=True, long_clip_frozen_pe=False, own_caption="keep"),
}

# Settings a stage never reads: `effective_settings` shows them as null.
UNUSED_BY_STAGE: dict[int, tuple[str, ...]] = {
    1: ("region_weight", "multi_positive", "own_caption", "min_box", "max_box", "caption_key", "data_root"),
    2: ("distill_weight", "teacher", "teacher_grad", "ema_momentum", "crop_scale", "crop_ratio", "shuffle_buffer",
        "shard_shuffle", "samples"),
}


def _coerce(name: str, value, current):
    """A value from a file or a `key=value` flag, converted to the type of the field's default."""
    try:
        if isinstance(value, str) and not isinstance(current, str):
            value = json.loads(value) if not isinstance(current, bool) else value.strip().lower()
            if isinstance(current, bool):
                if value not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                    raise ValueError(value)
                return value in ("1", "true", "yes", "on")
        if isinstance(current, bool):
            return bool(value)
        if isinstance(current, tuple):
            if len(value) != len(current):
                raise ValueError(value)
            return tuple(float(v) for v in value)
        if isinstance(current, float):
            return float(value)
        if isinstance(current, int):
            if float(value) != int(float(value)):
                raise ValueError(value)
            return int(float(value))
        return str(value)
    except (TypeError, ValueError) as exc:
        raise InputError(f"bad value for {name}: {value!r}") from exc


def read_config_file(path: str | Path) -> dict:
    """A flat mapping of field names from a .yaml/.yml/.toml/.json file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read config {path}: {exc.strerror or exc}") from None
    try:
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text) or {}
    except Exception as exc:  # the parsers' own error types differ
        raise InputError(f"cannot parse config {path}: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"config {path} must be a mapping of settings")
    return data


def build_config(stage: int | None = None, file: str | None = None, overrides: dict | None = None,
                 need_data: bool = True) -> TrainConfig:
    """Defaults of the stage, then the recipe's settings, then the file, then the overrides (flags and
    `--set key=value`)."""
    from_file = read_config_file(file) if file else {}
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    stage = int(overrides.get("stage") or from_file.get("stage") or stage or 1)
    recipe = str(overrides.get("recipe") or from_file.get("recipe") or "published")
    if recipe not in RECIPES:
        raise InputError(f"recipe must be one of {', '.join(RECIPES)}")
    config = TrainConfig(stage=stage)
    known = {f.name for f in fields(TrainConfig)}
    for source in (STAGE_DEFAULTS.get(stage, {}), RECIPES[recipe], from_file, overrides):
        for name, value in source.items():
            name = name.replace("-", "_")
            if name not in known:
                raise InputError(f"unknown setting '{name}'")
            setattr(config, name, _coerce(name, value, getattr(config, name)))
    return config.validate(need_data)


def effective_settings(cfg: TrainConfig) -> dict:
    """The settings a run of this stage uses, as one flat mapping (`--print-config`): `wd` is the weight
    decay, settings the stage never reads are null, `color_jitter` is null when it is never applied."""
    out = cfg.as_dict()
    out["wd"] = out.pop("weight_decay")
    for name in UNUSED_BY_STAGE[cfg.stage]:
        out[name] = None
    if cfg.color_jitter_p <= 0:
        out["color_jitter"] = None
    if cfg.stage == 1 and cfg.teacher != "active":
        out["teacher_grad"] = False  # an EMA or frozen copy never carries gradient
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def parse_assignments(items: list[str]) -> dict:
    """['lr=1e-5', 'teacher=ema'] → {'lr': '1e-5', 'teacher': 'ema'}."""
    out = {}
    for item in items:
        if "=" not in item:
            raise InputError(f"--set expects key=value, got '{item}'")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


__all__ = ["TrainConfig", "STAGE_DEFAULTS", "RECIPES", "build_config", "effective_settings", "parse_assignments",
           "read_config_file"]
