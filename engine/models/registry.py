"""Which models exist: the released FarSLIP checkpoints and the architectures they use.

A *release* is a named checkpoint on the Hugging Face Hub (repo + file + architecture).
An *architecture* is an open_clip model config (`ViT-B-16`, `ViT-B-32`, ...) or one of the tiny
configs below that tests and quick experiments use. All FarSLIP models use QuickGELU.
Whether a checkpoint carries Long-CLIP text positions is read from its state dict, never from
its name (see `checkpoint.py`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from engine.errors import ModelError

HF_REPO = "ZhenShiL/FarSLIP"


@dataclass(frozen=True)
class Release:
    name: str  # what users type: farslip2-vit-b-16
    repo_id: str
    filename: str
    arch: str
    description: str


RELEASES: dict[str, Release] = {
    r.name: r
    for r in (
        Release("farslip1-vit-b-16", HF_REPO, "FarSLIP1_ViT-B-16.pt", "ViT-B-16",
                "stage 1 (RS5M, patch-to-patch distillation), ViT-B/16"),
        Release("farslip1-vit-b-32", HF_REPO, "FarSLIP1_ViT-B-32.pt", "ViT-B-32",
                "stage 1 (RS5M, patch-to-patch distillation), ViT-B/32"),
        Release("farslip2-vit-b-16", HF_REPO, "FarSLIP2_ViT-B-16.pt", "ViT-B-16",
                "stage 2 (MGRS-200k, region-category alignment), ViT-B/16"),
        Release("farslip2-vit-b-32", HF_REPO, "FarSLIP2_ViT-B-32.pt", "ViT-B-32",
                "stage 2 (MGRS-200k, region-category alignment), ViT-B/32"),
    )
}


def _tiny(patch: int, image: int = 224) -> dict:
    return {
        "embed_dim": 32,
        "vision_cfg": {"image_size": image, "layers": 2, "width": 32, "patch_size": patch, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    }


# Tiny architectures: same structure as ViT-B (CLS token, ln_pre/ln_post/proj, QuickGELU), a
# fraction of the cost. Used by the tests and for smoke runs; never for real results.
TINY_ARCHS: dict[str, dict] = {
    "tiny-vit-16": _tiny(16),
    "tiny-vit-32": _tiny(32),
    "tiny-vit-16-s64": _tiny(16, image=64),
}


def find_release(name: str) -> Release | None:
    return RELEASES.get(name.strip().lower())


def release_for_filename(filename: str) -> Release | None:
    """The release a local file is a copy of, judged by its file name (used to guess `--arch`)."""
    for release in RELEASES.values():
        if release.filename.lower() == filename.lower():
            return release
    return None


def arch_config(arch: str) -> dict:
    """The open_clip model config (embed_dim, vision_cfg, text_cfg) of an architecture name."""
    if arch in TINY_ARCHS:
        return copy.deepcopy(TINY_ARCHS[arch])
    import open_clip

    base = arch[: -len("-quickgelu")] if arch.endswith("-quickgelu") else arch
    cfg = open_clip.get_model_config(base)
    if cfg is None or "vision_cfg" not in cfg or cfg["vision_cfg"].get("timm_model_name"):
        known = ", ".join(sorted(TINY_ARCHS) + ["ViT-B-16", "ViT-B-32", "ViT-L-14"])
        raise ModelError(f"unknown architecture '{arch}' (an open_clip ViT config name, e.g. {known})")
    cfg = copy.deepcopy(cfg)
    cfg.pop("quick_gelu", None)
    return cfg


def known_model_names() -> list[str]:
    return sorted(RELEASES)
