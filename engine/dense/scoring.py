"""From averaged cosine logits over names to class probabilities and a class map.

    p(name)  = softmax over all names of (logit_scale · cosine)
    p(class) = max over the class's names of p(name)
    class    = argmax p(class); pixels with max p(class) < threshold → background (or NO_CLASS)
"""

from __future__ import annotations

import torch

from engine.dense.prompts import NO_CLASS


def class_probabilities(logits: torch.Tensor, name_to_class: list[int], logit_scale: float = 50.0) -> torch.Tensor:
    """[N_names, ...] cosine logits → [N_classes, ...] probabilities (max over synonyms)."""
    probs = torch.softmax(logits * logit_scale, dim=0)
    rows: dict[int, list[int]] = {}
    for name_index, class_index in enumerate(name_to_class):
        rows.setdefault(class_index, []).append(name_index)
    # A class's names are consecutive (PromptSet lists them class by class): slices, no index tensor
    # to copy to the device (which would wait for the queued kernels).
    return torch.stack([probs[r[0]:r[-1] + 1].amax(dim=0) if r == list(range(r[0], r[-1] + 1))
                        else probs[r].amax(dim=0) for r in (rows[c] for c in range(len(rows)))])


def class_map_and_best(probs: torch.Tensor, prob_threshold: float = 0.0,
                       background_index: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """[C, ...] probabilities → (uint8 [...] class indices, thresholded to background / NO_CLASS; the
    best class probability [...]).

    The index is torch.max's (the first class holding the best probability), counted as the number
    of leading classes below the best: twice as fast on a CPU as `max` with indices over the first
    dimension, and exactly the same."""
    best = probs.amax(dim=0)
    index = torch.zeros(best.shape, dtype=torch.uint8, device=best.device)
    below = torch.ones(best.shape, dtype=torch.bool, device=best.device)
    for k in range(probs.shape[0] - 1):
        below &= probs[k] < best
        index += below
    if prob_threshold > 0:
        fill = NO_CLASS if background_index is None else background_index
        index = torch.where(best < prob_threshold, torch.full_like(index, fill), index)
    return index, best


def class_map(probs: torch.Tensor, prob_threshold: float = 0.0, background_index: int | None = None) -> torch.Tensor:
    """[C, ...] probabilities → uint8 [...] class indices, thresholded to background / NO_CLASS."""
    return class_map_and_best(probs, prob_threshold, background_index)[0]
