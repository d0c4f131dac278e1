"""Text side of the classifier: one embedding per class name, averaged over prompt templates, cached.

Each name is written into every template, encoded, L2-normalised; the template embeddings are
averaged and re-normalised. Results are cached per (model, names, template set).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable

import torch

from engine.dense.prompts import PromptSet, templates
from engine.errors import InputError
from engine.models import LoadedModel
from engine.models.clip import CLIP_CONTEXT

_CACHE: OrderedDict[tuple, torch.Tensor] = OrderedDict()
_CACHE_SIZE = 64
_LOCK = threading.Lock()


def embed_names(model: LoadedModel, names: list[str], template_set: str = "imagenet80") -> torch.Tensor:
    """[len(names), D] unit vectors, each the re-normalised mean of the name's template embeddings."""
    tmpl = templates(template_set)
    key = (model.key, tuple(names), template_set)
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    texts = [t.format(name) for name in names for t in tmpl]
    refuse_names_cut_short(names, template_set, model.context_length, model.token_counts)
    per_template = model.encode_text(texts).reshape(len(names), len(tmpl), -1)
    embeddings = torch.nn.functional.normalize(per_template.mean(dim=1), dim=-1)
    with _LOCK:
        _CACHE[key] = embeddings
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return embeddings


def refuse_names_cut_short(names: list[str], template_set: str, context_length: "int | Callable[[], int]",
                           token_counts: Callable[[list[str]], list[int]]) -> None:
    """An InputError naming the first name that a text encoder reading `context_length` tokens (or a
    function giving it, asked only for names past 77 bytes) would cut short in one of the templates
    (`token_counts`: tokens of each text with its start and end tokens): two long names differing only
    past the cut would get the same embedding, and a class that cannot win. The engine checks this
    before embedding; the API before it accepts a job."""
    tmpl = templates(template_set)
    texts = [t.format(name) for name in names for t in tmpl]
    most_bytes = max((len(t.encode("utf-8")) for t in texts), default=0) + 2
    if most_bytes <= (CLIP_CONTEXT if callable(context_length) else context_length):
        return  # (a token is at least one byte of UTF-8, with a start and an end token around them)
    if callable(context_length):
        context_length = context_length()
        if most_bytes <= context_length:
            return
    maybe = [k for k, t in enumerate(texts) if len(t.encode("utf-8")) + 2 > context_length]  # (the rest fit)
    most: dict[int, int] = {}  # name → its longest template, in tokens
    for k, count in zip(maybe, token_counts([texts[k] for k in maybe])):
        most[k // len(tmpl)] = max(most.get(k // len(tmpl), 0), count)
    for k, name in enumerate(names):
        longest = most.get(k, 0)
        if longest > context_length:
            shown = name if len(name) <= 60 else name[:57] + "..."
            raise InputError(f"class name '{shown}' is too long for the model's text encoder: with its prompt "
                             f"template it makes {longest} tokens, and the model reads {context_length}; "
                             f"shorten it")


def embed_prompts(model: LoadedModel, prompts: PromptSet, template_set: str = "imagenet80") -> torch.Tensor:
    return embed_names(model, prompts.names, template_set)
