"""Up-sampler checkpoints written the way SegEarth-OV released theirs (random weights).

The key names and shapes below are read off the released `clip_jbu_stack_cocostuff.ckpt` (jbu_stack,
window 7×7) and SegEarth-OV's JBUOne definition (jbu_one, one step module `up`, window 11×11); the
file is a PyTorch Lightning checkpoint whose `state_dict` prefixes every key with `upsampler.`.
"""

from __future__ import annotations

from pathlib import Path

import torch

KEY_DIM = 32


def released_shapes(dim: int, kind: str = "jbu_one") -> dict[str, tuple[int, ...]]:
    taps = 121 if kind == "jbu_one" else 49
    steps = ["up"] if kind == "jbu_one" else ["up1", "up2", "up3", "up4"]
    shapes: dict[str, tuple[int, ...]] = {}
    for s in steps:
        shapes.update({
            f"{s}.range_temp": (), f"{s}.sigma_spatial": (),
            f"{s}.range_proj.0.weight": (KEY_DIM, 3, 1, 1), f"{s}.range_proj.0.bias": (KEY_DIM,),
            f"{s}.range_proj.3.weight": (KEY_DIM, KEY_DIM, 1, 1), f"{s}.range_proj.3.bias": (KEY_DIM,),
            f"{s}.fixup_proj.0.weight": (taps, taps + 3, 1, 1), f"{s}.fixup_proj.0.bias": (taps,),
            f"{s}.fixup_proj.3.weight": (taps, taps, 1, 1), f"{s}.fixup_proj.3.bias": (taps,),
        })
    shapes.update({"fixup_proj.1.weight": (dim, dim, 1, 1), "fixup_proj.1.bias": (dim,)})
    return shapes


def random_state(dim: int, kind: str = "jbu_one", seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights of the released models' scale: temperature e^0.4, σ around 0.7, 1×1 convolution
    weights ~ N(0, 1/fan_in), biases ~ N(0, 0.1²)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in released_shapes(dim, kind).items():
        if key.endswith("range_temp"):
            state[key] = torch.tensor(0.4)
        elif key.endswith("sigma_spatial"):
            state[key] = torch.tensor(0.6 + 0.2 * torch.rand((), generator=g).item())
        elif key.endswith(".bias"):
            state[key] = 0.1 * torch.randn(shape, generator=g)
        else:
            state[key] = torch.randn(shape, generator=g) / shape[1] ** 0.5
    return state


def write_released(path: Path, state: dict[str, torch.Tensor]) -> Path:
    """Save in the Lightning layout of the released files."""
    torch.save({"epoch": 10, "global_step": 1000, "pytorch-lightning_version": "1.9.4",
                "state_dict": {f"upsampler.{k}": v for k, v in state.items()},
                "loops": {}, "callbacks": {}, "optimizer_states": [], "lr_schedulers": []}, path)
    return path
