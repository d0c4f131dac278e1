"""The network a training run starts from.

    farslip2-vit-b-16 | path/to/checkpoint.pt   anything the engine loads (release name or file)
    openai:ViT-B-16                             open_clip pretrained weights (TAG:ARCH; QuickGELU),
                                                from open_clip's download cache — needs them there or a network
    random:ViT-B-16                             random initialisation (smoke runs and tests)

`long_clip` (either stage) turns a 77-position text tower into Long-CLIP (248 positions: the first 20
kept, the rest linearly stretched 4×, as the published `load_from_clip` does).
"""

from __future__ import annotations

from engine.errors import ModelError, first_line
from engine.models.clip import FarSLIPCLIP, build_clip, to_long_clip
from engine.models.loader import build_from_state_dict, load_clip


def shorten(text: str, limit: int = 160) -> str:
    """`text` cut to at most `limit` characters at a word boundary, with "…" when cut."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0].rstrip(" ,;:.(")
    return (cut or text[:limit]) + " …"


def _pretrained(tag: str, arch: str) -> FarSLIPCLIP:
    import logging

    import open_clip

    quiet = [logging.getLogger(), logging.getLogger("huggingface_hub")]  # the hub's retry chatter
    levels = [logger.level for logger in quiet]
    try:
        for logger in quiet:
            logger.setLevel(logging.CRITICAL)
        reference = open_clip.create_model(arch, pretrained=tag, force_quick_gelu=True)
    except Exception as exc:  # open_clip raises RuntimeError/OSError/HF errors for missing weights
        raise ModelError(f"cannot get open_clip weights {arch} '{tag}' (not in the local cache and not "
                         f"downloadable: {shorten(first_line(exc))}); pass a local checkpoint with --model") from None
    finally:
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)
    return build_from_state_dict(reference.state_dict(), arch, source=f"open_clip {arch}/{tag}")


def starting_network(spec: str, arch: str = "", long_clip: bool = False) -> tuple[FarSLIPCLIP, str]:
    """(network in float32 on the CPU, its architecture) for a `--model` value."""
    prefix, _, rest = spec.partition(":")
    if rest and prefix == "random":
        arch = rest
        clip = build_clip(arch)
    elif rest and not prefix.startswith(("/", ".", "~")) and len(prefix) > 1:  # TAG:ARCH (not C:\\ paths)
        arch = rest
        clip = _pretrained(prefix, arch)
    else:
        clip, arch, _ = load_clip(spec, arch or None)
    if long_clip:
        clip = to_long_clip(clip, arch)
    return clip, arch
