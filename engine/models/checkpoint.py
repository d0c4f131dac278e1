"""Reading checkpoint files into a plain state dict, whatever layout the release used.

Accepted: `.pt`/`.pth`/`.bin` files read with `torch.load(weights_only=True)` holding either a
state dict or a wrapper (`{"epoch", "name", "state_dict", "optimizer"}` as the FarSLIP training
code saves, or `{"model": ...}`), keys possibly prefixed `module.` (DDP) ; and `.safetensors`.
Long-CLIP text positions (context 248, `positional_embedding_res`, `mask1`/`mask2`) are detected
from the keys and shapes.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from engine.errors import ModelError, first_line

_WRAPPER_KEYS = ("state_dict", "model", "module", "model_state_dict")
_PREFIXES = ("module.", "_orig_mod.", "model.")


def read_state_dict(path: str | Path, mmap: bool = False) -> dict[str, torch.Tensor]:
    """Load a checkpoint file and return its (unwrapped, unprefixed) tensor state dict. `mmap`: map the
    tensors instead of reading them (a quick look at names and shapes; files torch saved as zip)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw = load_file(str(path), device="cpu")
        else:
            raw = _torch_load(path, mmap)
    except Exception as exc:  # noqa: BLE001 - arbitrary bytes make torch/safetensors raise any kind
        raise ModelError(f"{path.name} is not a readable checkpoint ({why_unreadable(exc)})") from None
    return unwrap_state_dict(raw, source=path.name)


def why_unreadable(exc: Exception) -> str:
    """What a user can act on, in a few words: never PyTorch's advice to load with `weights_only=False`
    (which would run code from the file)."""
    text = first_line(exc)
    if isinstance(exc, pickle.UnpicklingError) and "weights only load failed" in text.lower():
        return "it holds Python objects besides tensors; only tensors are loaded, never code from a file"
    if isinstance(exc, OSError):
        return text
    return "not a PyTorch (.pt/.pth) or safetensors file of tensors"


def _torch_load(path: Path, mmap: bool):
    if mmap and zipfile.is_zipfile(path):
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    return torch.load(str(path), map_location="cpu", weights_only=True)


def unwrap_state_dict(raw: object, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Find the tensor dict inside a training checkpoint and drop DDP/compile prefixes."""
    state = raw
    for _ in range(3):  # wrappers can nest ({"state_dict": {"model": ...}})
        if isinstance(state, dict):
            inner = next((state[k] for k in _WRAPPER_KEYS if isinstance(state.get(k), dict)), None)
            if inner is not None and not _is_tensor_dict(state):
                state = inner
                continue
        break
    if not isinstance(state, dict) or not state:
        raise ModelError(f"{source} holds no state dict")
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelError(f"{source} holds no tensors (keys: {', '.join(list(map(str, state))[:8])})")
    return strip_prefixes(tensors)


def _is_tensor_dict(d: dict) -> bool:
    return any(isinstance(v, torch.Tensor) for v in d.values())


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove a prefix (`module.`, ...) that every key carries."""
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


def text_context_length(state: dict[str, torch.Tensor]) -> int | None:
    """Number of text positions the checkpoint was trained with (77 for CLIP, 248 for Long-CLIP)."""
    pe = state.get("positional_embedding")
    return int(pe.shape[0]) if pe is not None and pe.ndim == 2 else None


def is_long_clip(state: dict[str, torch.Tensor]) -> bool:
    """Long-CLIP text positions: `positional_embedding_res` of the same shape as the positions."""
    res = state.get("positional_embedding_res")
    pe = state.get("positional_embedding")
    return res is not None and pe is not None and tuple(res.shape) == tuple(pe.shape)


def vision_signature(state: dict[str, torch.Tensor]) -> tuple[int, int, int] | None:
    """(patch size, width, layers) of the vision tower, to check or guess the architecture."""
    conv = state.get("visual.conv1.weight")
    if conv is None or conv.ndim != 4:
        return None
    layers = {k.split(".")[3] for k in state if k.startswith("visual.transformer.resblocks.")}
    return int(conv.shape[-1]), int(conv.shape[0]), len(layers)


MAX_LISTED_KEYS = 8


def key_mismatch(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> str | None:
    """None when `state` fits `expected` exactly (same keys, same shapes); else which keys do not, e.g.
    "2 missing: a, b; 1 wrong shape: c" (at most MAX_LISTED_KEYS names per kind)."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
        if keys:
            more = f" (+{len(keys) - MAX_LISTED_KEYS} more)" if len(keys) > MAX_LISTED_KEYS else ""
            parts.append(f"{len(keys)} {label}: {', '.join(keys[:MAX_LISTED_KEYS])}{more}")
    return "; ".join(parts) or None
