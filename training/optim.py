"""Optimiser and learning-rate schedule.

AdamW with weight decay on weight matrices only (gains, biases, embeddings of rank < 2 and the
temperature are not decayed, as in CLIP's training), and a cosine schedule with linear warm-up:
    lr(t) = lr · (t + 1) / warmup                                   for t < warmup
    lr(t) = lr · ½ (1 + cos(π (t − warmup) / (total − warmup)))     after
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


def make_scheduler(optimizer: torch.optim.Optimizer, total: int, warmup: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: cosine_with_warmup(step, total, warmup))
