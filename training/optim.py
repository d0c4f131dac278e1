"""Optimiser and learning-rate schedule.

AdamW with weight decay on weight matrices only (gains, biases, embeddings of rank < 2 and the
temperature are not decayed, as in CLIP's training), and a cosine schedule with linear warm-up:
    lr(t) = lr · (t + 1) / warmup                                   for t < warmup
    lr(t) = lr · ½ (1 + cos(π (t − warmup) / (total − warmup)))     after
set before each step from the current settings (a resumed run included).
"""

from __future__ import annotations

import math

import torch

from training.config import TrainConfig


def _no_decay(name: str, param: torch.Tensor) -> bool:
    return param.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if _no_decay(n, p)], "weight_decay": 0.0},
              {"params": [p for n, p in named if not _no_decay(n, p)], "weight_decay": cfg.weight_decay}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


def cosine_with_warmup(step: int, total: int, warmup: int) -> float:
    """The factor on the base learning rate at optimiser step `step` (0-based)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    span = max(total - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    return 0.5 * (1 + math.cos(math.pi * progress))


class Schedule:
    """The learning rate of each optimiser step, from the current settings alone: `apply(optimizer, step)`
    sets it before step `step` (0-based) is taken, as the published code calls `scheduler(step)` each
    step. Nothing of it is saved — a resumed run follows its own `lr`, warm-up and step total from
    the step it resumes at, whatever the interrupted run used."""

    def __init__(self, lr: float, total: int, warmup: int):
        self.lr, self.total, self.warmup = lr, total, warmup

    def rate(self, step: int) -> float:
        return self.lr * cosine_with_warmup(step, self.total, self.warmup)

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        lr = self.rate(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr


def restore_optimizer(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a checkpoint's optimiser state (AdamW's moments) but keep the hyper-parameters of the current
    settings (lr, weight decay, betas, eps): those in the file are the interrupted run's. A state of
    another set of weights raises ValueError."""
    current = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, settings in zip(optimizer.param_groups, current):
        group.pop("initial_lr", None)  # written by the LambdaLR of earlier checkpoints
        group.update(settings)
