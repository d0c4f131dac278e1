"""What an evaluation's saved state (OVSS resume state, cached image embeddings) is tied to, so that a
rerun never mixes models or data: the model's weights, a file's size and modification time."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from engine.models import LoadedModel


def model_identity(model: LoadedModel) -> str:
    """SHA-256 of every weight of the network (names, shapes, dtypes and bytes), its architecture, input
    size, context length and precision: equal for the same checkpoint loaded again, different for
    another checkpoint, another architecture or precision."""
    digest = hashlib.sha256()
    digest.update(json.dumps([model.arch, str(model.dtype), model.image_size, model.context_length]).encode())
    for name, tensor in sorted(model.clip.state_dict().items()):
        tensor = tensor.detach()
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}".encode())
        if tensor.numel():
            digest.update(tensor.contiguous().reshape(-1).view(torch.uint8).cpu().numpy().tobytes())
    return digest.hexdigest()


def file_stamp(path: str | Path) -> str:
    """`size:mtime_ns` of a file ('missing' when it is not there): a replaced file gets another stamp."""
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    return f"{st.st_size}:{st.st_mtime_ns}"


def settings_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()
