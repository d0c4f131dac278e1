"""From averaged cosine logits over names to class probabilities and a class map.

    p(name)  = softmax over all names of (logit_scale · cosine)
    p(class) = max over the class's names of p(name)
    class    = argmax p(class); pixels with max p(class) < threshold → background (or NO_CLASS)

The class map needs no probabilities: softmax and the max over synonyms keep the order of the
names, so the best class is the class of the best name, and its probability is the best name's.
`classes_from_logits` computes them so (no per-class probability array; no softmax at all when
neither the best probability nor a threshold is asked for); `class_probabilities` is for the
score rasters.
"""

from __future__ import annotations

import torch

from engine.dense.prompts import NO_CLASS


def class_probabilities(logits: torch.Tensor, name_to_class: list[int], logit_scale: float = 50.0) -> torch.Tensor:
    """[N_names, ...] cosine logits → [N_classes, ...] probabilities (max over synonyms)."""
    probs = torch.softmax(logits * logit_scale, dim=0)
    rows = _names_by_class(name_to_class)
    # A class's names are consecutive (PromptSet lists them class by class): slices, no index tensor
    # to copy to the device (which would wait for the queued kernels).
    return torch.stack([probs[r[0]:r[-1] + 1].amax(dim=0) if r == list(range(r[0], r[-1] + 1))
                        else probs[r].amax(dim=0) for r in (rows[c] for c in range(len(rows)))])


def _names_by_class(name_to_class: list[int]) -> dict[int, list[int]]:
    """Class index → the indices of its names."""
    names: dict[int, list[int]] = {}
    for name_index, class_index in enumerate(name_to_class):
        names.setdefault(class_index, []).append(name_index)
    return names


def classes_from_logits(logits: torch.Tensor, name_to_class: list[int], logit_scale: float = 50.0,
                        prob_threshold: float = 0.0, background_index: int | None = None,
                        with_best: bool = False,
                        probabilities: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[N_names, ...] cosine logits → (uint8 [...] class indices, thresholded to background / NO_CLASS;
    the best class probability [...] when `with_best`, else None): the first class holding the highest
    of `class_probabilities(logits, ...)`, as torch.max gives it, and that probability, without making them
    (a caller that has made them for the scores passes them as `probabilities`: no second softmax).

    The index is that of the first class holding the best scaled logit (torch.max's choice on a
    tie), counted as the number of leading classes all of whose names are below it. (Two scaled
    logits so close that their probabilities round to the same float are a tie there, not here.)"""
    scaled = logits * logit_scale  # as the softmax sees them
    top = scaled.amax(dim=0)
    index = torch.zeros(top.shape, dtype=torch.uint8, device=top.device)
    below = torch.ones(top.shape, dtype=torch.bool, device=top.device)
    names_of = _names_by_class(name_to_class)
    for c in range(len(names_of) - 1):
        for name_index in names_of[c]:
            below &= scaled[name_index] < top
        index += below
    best = None
    if with_best or prob_threshold > 0:
        # the best name's probability is the best class's
        best = (torch.softmax(scaled, dim=0) if probabilities is None else probabilities).amax(dim=0)
    if prob_threshold > 0:
        fill = NO_CLASS if background_index is None else background_index
        index = torch.where(best < prob_threshold, torch.full_like(index, fill), index)
    return index, best if with_best else None
