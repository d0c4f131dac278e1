"""Loading a learned feature up-sampler (SimFeatUp JBU, `engine.dense.jbu`) from its weights file.

    upsampler = load_upsampler("xclip_jbu_one_million_aid.ckpt", feat_dim=512, device="cpu")

Where: a local file, or `hf://owner/repo/path/in/repo.ckpt` (fetched into the Hugging Face cache).
Format: SegEarth-OV's released files are PyTorch Lightning checkpoints, a dict whose `state_dict`
holds the up-sampler's tensors under `upsampler.` (`upsampler.up.range_temp`, ...; their code strips
the first 10 characters and loads strictly). Plain state dicts, with or without that prefix, and
`.safetensors` files are accepted too. The kind (`jbu_one`: `up.*`, `jbu_stack`: `up1..up4.*`) and
the feature dimension (`fixup_proj.1.weight`) are read from the tensors; the dimension must equal
the model's embedding dimension (512 for ViT-B), since the up-sampler works on the projected patch
features, before they are normalised. Loading is strict and names the keys that do not fit.
"""

from __future__ import annotations

from pathlib import Path

import torch

from engine import config
from engine.dense.jbu import JBUUpsampler
from engine.errors import InputError, ModelError
from engine.models.checkpoint import MAX_LISTED_KEYS, key_mismatch

HUB_SCHEME = "hf://"
PREFIX = "upsampler."


def parse_hub_spec(spec: str) -> tuple[str, str] | None:
    """(repo id, file path in the repo) of `hf://owner/repo/file`, None for a local path."""
    if not spec.startswith(HUB_SCHEME):
        return None
    parts = spec[len(HUB_SCHEME):].split("/")
    if len(parts) < 3 or not all(parts):
        raise InputError(f"up-sampler '{spec}': write a Hub file as hf://owner/repo/path/to/weights.ckpt")
    return "/".join(parts[:2]), "/".join(parts[2:])


def check_spec(spec: str) -> None:
    """Fail early (before any model is loaded) on a local file that is not there."""
    if parse_hub_spec(spec) is not None:
        return
    path = config.user_path(spec)
    if not path.exists():
        raise InputError(f"up-sampler weights not found: {spec}")
    if not path.is_file():
        raise InputError(f"up-sampler weights '{spec}' is a folder; pass the checkpoint file inside it")


def resolve_path(spec: str, offline: bool | None = None) -> Path:
    """The local file of a path or a Hub spec (downloading it when needed)."""
    hub_spec = parse_hub_spec(spec)
    if hub_spec is None:
        check_spec(spec)
        return config.user_path(spec)
    from engine.models import hub

    repo_id, filename = hub_spec
    return hub.fetch_file(repo_id, filename, f"up-sampler {spec}",
                          f"download {filename} from {repo_id} yourself and pass its path", offline=offline)


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """The up-sampler's tensors, with the Lightning wrapper and the `upsampler.` prefix removed."""
    from engine.models.checkpoint import read_state_dict

    try:
        state = read_state_dict(path)
    except ModelError as exc:
        raise InputError(f"up-sampler weights: {exc}") from None
    if all(k.startswith(PREFIX) for k in state):
        state = {k[len(PREFIX):]: v for k, v in state.items()}
    return state


def kind_of(state: dict[str, torch.Tensor], source: str) -> str:
    if any(k.startswith("up.") for k in state):
        return "jbu_one"
    if any(k.startswith("up1.") for k in state):
        return "jbu_stack"
    shown = ", ".join(sorted(state)[:MAX_LISTED_KEYS])
    raise InputError(f"{source} is not a JBU up-sampler (jbu_one or jbu_stack): no 'up.*' or 'up1.*' "
                     f"tensors (keys: {shown})")


def feature_dim_of(state: dict[str, torch.Tensor], source: str) -> int:
    weight = state.get("fixup_proj.1.weight")
    if weight is None or weight.ndim != 4:
        raise InputError(f"{source} lacks the up-sampler's output projection 'fixup_proj.1.weight'")
    return int(weight.shape[0])


def build_upsampler(state: dict[str, torch.Tensor], feat_dim: int, source: str = "up-sampler weights") -> JBUUpsampler:
    """A JBU up-sampler for `feat_dim`-d features with `state` loaded strictly (eval mode, CPU, float32)."""
    kind = kind_of(state, source)
    dim = feature_dim_of(state, source)
    if dim != feat_dim:
        raise InputError(f"{source} up-samples {dim}-d features but the model's patch features are "
                         f"{feat_dim}-d: use weights trained for this model's embedding size")
    module = JBUUpsampler(feat_dim, kind)
    problem = key_mismatch(module.state_dict(), state)
    if problem:
        raise InputError(f"{source} does not fit a {kind} up-sampler for {feat_dim}-d features: {problem}")
    module.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return module.eval()


def load_upsampler(spec: str, feat_dim: int, device: torch.device | str = "cpu",
                   offline: bool | None = None) -> JBUUpsampler:
    """Read, check and place an up-sampler (float32, eval mode) on `device`."""
    path = resolve_path(spec, offline=offline)
    module = build_upsampler(read_state(path), feat_dim, source=path.name)
    return module.to(device).requires_grad_(False)
