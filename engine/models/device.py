"""Choosing where and in which precision the model runs: CUDA (fp16) when present, else CPU (fp32)."""

from __future__ import annotations

import torch

from engine import config
from engine.errors import ModelError

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def select_device(requested: str | None = None) -> torch.device:
    """`auto` (or None) → first CUDA device when present, else CPU; `cpu`, `cuda`, `cuda:N` as given."""
    given = requested or config.default_device()
    # where the name came from, for the message: --device, or the environment when none was given
    said = f"device '{given}'" if requested else f"FARSLIP_DEVICE={given}"
    name = given.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ModelError(f"unknown {said} (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"{said} asked for, but torch sees no CUDA GPU here (use --device cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ModelError(f"{said} asked for, but only {torch.cuda.device_count()} GPU(s) are visible")
    return device


def select_dtype(device: torch.device, requested: str | None = None) -> torch.dtype:
    """Half precision on CUDA, fp32 on CPU, unless a precision is named."""
    if requested in (None, "", "auto"):
        return torch.float16 if device.type == "cuda" else torch.float32
    if requested not in PRECISIONS:
        raise ModelError(f"unknown precision '{requested}' (use auto, {', '.join(PRECISIONS)})")
    return PRECISIONS[requested]
