"""Loading a FarSLIP model by release name or local file, ready for inference.

    model = load_model("farslip2-vit-b-16")                     # HF cache / download
    model = load_model("/data/FarSLIP2_ViT-B-16.pt")            # arch guessed from the file
    model = load_model("my.safetensors", arch="ViT-B-32", device="cpu")
"""

from __future__ import annotations

import functools
import itertools
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine import config
from engine.errors import ModelError
from engine.models import checkpoint, hub
from engine.models.clip import FarSLIPCLIP, build_clip
from engine.models.device import select_device, select_dtype
from engine.models.registry import TINY_ARCHS, arch_config, find_release, known_model_names, release_for_filename

_SERIALS = itertools.count()


@dataclass
class LoadedModel:
    """A FarSLIP network on its device, with what inference needs to know about it."""

    clip: FarSLIPCLIP
    name: str  # release name or file path, as the user named it
    arch: str
    device: torch.device
    dtype: torch.dtype
    source: str = ""  # file the weights came from ("" for in-memory models)
    dense_forward: object = field(default=None, repr=False)  # compiled dense forward (engine.dense.forward)
    _tokenizer: object = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # this object's number in the process: unlike id(clip), never given again to a later model whose
    # network happens to land at a freed one's address (whose cached text embeddings it would take)
    _serial: int = field(default_factory=lambda: next(_SERIALS), repr=False, compare=False)

    @property
    def long_clip(self) -> bool:
        return self.clip.long_clip

    @property
    def context_length(self) -> int:
        return int(self.clip.context_length)

    @property
    def image_size(self) -> int:
        return self.clip.input_size

    @property
    def patch_size(self) -> int:
        return self.clip.patch

    @property
    def key(self) -> str:
        """Identity used by caches (text embeddings): same key ⇔ same weights and precision."""
        return f"{self.name}|{self.source}|{self.arch}|{self.dtype}|{self._serial}"

    def tokenize(self, texts: list[str], context_length: int | None = None) -> torch.Tensor:
        """Token ids [len(texts), context_length] (default the model's: longer texts are cut short)."""
        if self._tokenizer is None:
            self._tokenizer = tokenizer_for(self.arch)
        return self._tokenizer(texts, context_length=context_length or self.context_length)

    def token_counts(self, texts: list[str]) -> list[int]:
        """Tokens of each text with its start and end tokens, however many the model reads (a text of
        more than `context_length` is cut short when encoded)."""
        if self._tokenizer is None:
            self._tokenizer = tokenizer_for(self.arch)
        return count_tokens(self._tokenizer, texts)

    @torch.inference_mode()
    def encode_text(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """Normalised text embeddings [len(texts), D] in float32 on the model's device. Texts of the
        same token length go through together (`FarSLIPCLIP.encode_text` cuts the padding after the
        longest of a batch, so no batch carries padding); the order of `texts` is kept."""
        tokens = self.tokenize(texts)
        lengths = tokens.argmax(dim=-1)  # the end-of-text token has the highest id
        rows, parts = [], []
        for length in lengths.unique().tolist():
            same = (lengths == length).nonzero().flatten()
            for start in range(0, len(same), batch_size):
                rows.append(same[start:start + batch_size])
                parts.append(self.clip.encode_text(tokens[rows[-1]].to(self.device), normalize=True).float())
        order = torch.cat(rows).argsort().to(self.device)
        return torch.cat(parts)[order]

    @torch.inference_mode()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised image (CLS) embeddings [B, D] for normalised images [B, 3, S, S]."""
        return self.clip.encode_image(images.to(self.device, self.dtype), normalize=True).float()


@functools.lru_cache(maxsize=8)
def tokenizer_for(arch: str):
    """open_clip's tokenizer of an architecture (tiny test architectures use CLIP's BPE vocabulary),
    made once; call it as `tokenizer(texts, context_length=...)`."""
    import open_clip

    return open_clip.get_tokenizer("ViT-B-16" if arch in TINY_ARCHS else arch)


def count_tokens(tokenizer, texts: list[str]) -> list[int]:
    """Tokens of each text with its start and end tokens, however many a model reads."""
    longest = 4 * max((len(t) for t in texts), default=0) + 2  # a character is at most a few tokens
    tokens = tokenizer(texts, context_length=longest)
    return (tokens.argmax(dim=-1) + 1).tolist()  # the end-of-text token has the highest id


def wrap_model(clip: FarSLIPCLIP, arch: str, name: str = "in-memory", device: str | None = None,
               precision: str | None = None, source: str = "") -> LoadedModel:
    """Put a network on its device/precision in eval mode (used by the loader, training and tests)."""
    dev = select_device(device)
    dtype = select_dtype(dev, precision)
    clip = clip.to(dev, dtype).eval()
    return LoadedModel(clip=clip, name=name, arch=arch, device=dev, dtype=dtype, source=source)


def resolve_checkpoint(model: str, arch: str | None = None, offline: bool | None = None) -> tuple[Path, str]:
    """(file, architecture) for a release name or a local path."""
    release = find_release(model)
    if release is not None:
        if arch and arch != release.arch:
            raise ModelError(f"{release.name} is a {release.arch} model, not {arch}")
        return hub.fetch(release, offline=offline), release.arch
    path = config.user_path(model)
    if not path.exists():
        names = ", ".join(known_model_names())
        raise ModelError(f"unknown model '{model}': not a release ({names}) and no such file")
    if path.is_dir():
        raise ModelError(f"model '{model}' is a folder; pass the checkpoint file inside it")
    if arch is None:
        known = release_for_filename(path.name)
        arch = known.arch if known else None
    return path, arch or ""


def guess_arch(state: dict[str, torch.Tensor]) -> str:
    """Pick the architecture whose vision tower matches the checkpoint (for files without --arch)."""
    sig = checkpoint.vision_signature(state)
    for name in ("ViT-B-16", "ViT-B-32", "ViT-L-14", *TINY_ARCHS):
        vc = arch_config(name)["vision_cfg"]
        if sig == (vc["patch_size"], vc["width"], vc["layers"]):
            return name
    raise ModelError("cannot tell the checkpoint's architecture; pass it with --arch (e.g. ViT-B-16)")


def build_from_state_dict(state: dict[str, torch.Tensor], arch: str, source: str = "checkpoint") -> FarSLIPCLIP:
    """Create the network for `arch` (Long-CLIP when the state dict says so) and load the weights strictly.

    The network is laid out on the meta device and given uninitialised memory, so no time goes into
    the random initialisation that the weights overwrite anyway (1.3 s of a ViT-B's load, paid by
    every command, server start and Ray worker); the one buffer no checkpoint holds, the text
    tower's causal mask, is rebuilt."""
    long_clip = checkpoint.is_long_clip(state)
    with torch.device("meta"):
        clip = build_clip(arch, long_clip=long_clip)
    problem = checkpoint.key_mismatch(clip.state_dict(), state)
    if problem:
        raise ModelError(f"{source} does not fit architecture {arch}: {problem}")
    if clip.unsaved_buffers() - {"attn_mask"}:  # an open_clip with buffers we do not know how to rebuild
        clip = build_clip(arch, long_clip=long_clip)
    else:
        clip = clip.to_empty(device="cpu")
        clip.rebuild_causal_mask()
    clip.load_state_dict(state, strict=True)
    return clip


def check_checkpoint(model: str, arch: str | None = None) -> str:
    """Check, without building the network, that `model` names a release or a checkpoint file that
    fits an architecture (`arch` or the one its tensors show); returns that architecture. Raises
    ModelError naming the problem. A release is not downloaded here."""
    release = find_release(model)
    if release is not None:
        if arch and arch != release.arch:
            raise ModelError(f"{release.name} is a {release.arch} model, not {arch}")
        return release.arch
    path, arch = resolve_checkpoint(model, arch)
    state = checkpoint.read_state_dict(path, mmap=True)
    arch = arch or guess_arch(state)
    with torch.device("meta"):
        expected = build_clip(arch, long_clip=checkpoint.is_long_clip(state)).state_dict()
    problem = checkpoint.key_mismatch(expected, state)
    if problem:
        raise ModelError(f"{path.name} does not fit architecture {arch}: {problem}")
    return arch


def text_context_of(model: str) -> int | None:
    """The text positions a release or checkpoint file reads, from its tensors without building the
    network (memory-mapped, once per file version); None for a release not downloaded yet or a file
    without a text tower."""
    release = find_release(model)
    path = hub.cached_path(release) if release is not None else config.user_path(model)
    if path is None or not path.is_file():
        return None
    stat = path.stat()
    return _text_context_in(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=16)
def _text_context_in(path: str, mtime_ns: int, size: int) -> int | None:
    return checkpoint.text_context_length(checkpoint.read_state_dict(Path(path), mmap=True))


def load_model(model: str, arch: str | None = None, device: str | None = None,
               precision: str | None = None, offline: bool | None = None) -> LoadedModel:
    """Load a release (`farslip2-vit-b-16`) or a local `.pt`/`.safetensors` file for inference."""
    clip, arch, path = load_clip(model, arch, offline=offline)
    return wrap_model(clip, arch, name=model, device=device, precision=precision, source=str(path))


def load_clip(model: str, arch: str | None = None, offline: bool | None = None) -> tuple[FarSLIPCLIP, str, Path]:
    """(network on the CPU in float32, architecture, file) for a release name or a local file; training
    starts from this too."""
    path, arch = resolve_checkpoint(model, arch, offline=offline)
    state = checkpoint.read_state_dict(path)
    if not arch:
        arch = guess_arch(state)
    return build_from_state_dict(state, arch, source=path.name), arch, path
