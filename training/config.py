"""Training configuration: one dataclass, the published defaults of each stage, a YAML/TOML file and
command-line overrides, in that order of precedence (defaults < file < flags).

    python -m training.train --stage 1 --data 'rs5m/{0000..0031}.tar' --config stage1.yaml --set lr=2e-6
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from pathlib import Path

from engine.errors import InputError

TEACHER_MODES = ("active", "ema", "frozen")
PRECISIONS = ("auto", "fp32", "amp", "amp_bf16")


@dataclass
class TrainConfig:
    stage: int = 1
    data: str = ""                       # stage 1: shard spec ('rs5m/{0000..0031}.tar'); stage 2: text_info.json
    data_root: str = ""                  # stage 2: image folder (default: beside text_info.json)
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
    long_clip: bool = False              # stage 2: Long-CLIP text tower (248 positions)
    caption_key: str = "global_caption"
    # bookkeeping
    log_every: int = 10
    save_every: int = 0                  # also save every N steps (0: only at epoch ends)
    keep_checkpoints: int = 2
    resume: str = "auto"                 # auto (latest in out/ if any) | never | PATH
    tensorboard: bool = True
    find_unused_parameters: bool = False

    def validate(self) -> "TrainConfig":
        if self.stage not in (1, 2):
            raise InputError("--stage must be 1 or 2")
        if not self.data:
            raise InputError("no training data: pass --data")
        if self.teacher not in TEACHER_MODES:
            raise InputError(f"teacher must be one of {', '.join(TEACHER_MODES)}")
        if self.precision not in PRECISIONS:
            raise InputError(f"precision must be one of {', '.join(PRECISIONS)}")
        for name in ("epochs", "batch_size", "max_boxes"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1")
        for name in ("lr", "weight_decay", "warmup", "grad_clip", "max_steps", "samples", "workers",
                     "global_weight", "distill_weight", "region_weight"):
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


# Published defaults that differ between the stages (DESIGN.md); everything else is shared.
STAGE_DEFAULTS: dict[int, dict] = {
    1: dict(lr=1e-6, weight_decay=1.0, epochs=1, warmup=1000, batch_size=40, teacher="active"),
    2: dict(lr=4e-9, weight_decay=1.0, epochs=10, warmup=250, batch_size=40, long_clip=False),
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


def build_config(stage: int | None = None, file: str | None = None, overrides: dict | None = None) -> TrainConfig:
    """Defaults of the stage, then the file, then the overrides (flags and `--set key=value`)."""
    from_file = read_config_file(file) if file else {}
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    stage = int(overrides.get("stage") or from_file.get("stage") or stage or 1)
    config = TrainConfig(stage=stage)
    known = {f.name for f in fields(TrainConfig)}
    for source in (STAGE_DEFAULTS.get(stage, {}), from_file, overrides):
        for name, value in source.items():
            name = name.replace("-", "_")
            if name not in known:
                raise InputError(f"unknown setting '{name}'")
            setattr(config, name, _coerce(name, value, getattr(config, name)))
    return config.validate()


def parse_assignments(items: list[str]) -> dict:
    """['lr=1e-5', 'teacher=ema'] → {'lr': '1e-5', 'teacher': 'ema'}."""
    out = {}
    for item in items:
        if "=" not in item:
            raise InputError(f"--set expects key=value, got '{item}'")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


__all__ = ["TrainConfig", "STAGE_DEFAULTS", "build_config", "parse_assignments", "read_config_file"]
