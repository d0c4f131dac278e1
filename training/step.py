"""One training step's forward pass and losses, for both stages.

`FarSLIPTrainer` is the module DDP wraps: its forward computes every feature the stage's losses need
in one call (so DDP sees all parameter use in one forward), and `stage_losses` turns them into the
weighted losses (the published method, NJU-LHRS/FarSLIP):

    stage 1:  L = w_g · CLIP(image CLS, caption) + w_d · distill(RoIAlign(student dense map, box), teacher crop)
    stage 2:  L = w_g · CLIP(image CLS, long caption) + w_r · region(object CLS, category text)

The student's dense map and the image's CLS come from one pass (`dense_features(with_cls=True)`):
the first L−1 blocks are shared. The teacher encodes each crop on its own through the same dense
path; "active" uses the model being trained (with gradient as published, `teacher_grad`; without
under the revised recipe), "ema"/"frozen" a separate copy (never with gradient).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from engine.dense.forward import dense_features
from training.config import TrainConfig
from training.losses.contrastive import clip_loss
from training.losses.distill import distill_loss, student_region_embeddings, teacher_region_embeddings
from training.losses.region import region_loss


class FarSLIPTrainer(nn.Module):
    def __init__(self, clip: nn.Module, stage: int, teacher_grad: bool = True):
        super().__init__()
        self.clip, self.stage, self.teacher_grad = clip, stage, teacher_grad
        self.patch = clip.patch

    def forward(self, batch: dict, teacher: nn.Module | None = None) -> dict:
        clip = self.clip
        out = {"text": clip.encode_text(batch["tokens"]), "logit_scale": clip.logit_scale}
        if self.stage == 1:
            dense, out["image"] = dense_features(clip.visual, batch["images"], with_cls=True)
            out["student"] = student_region_embeddings(dense, list(batch["boxes"]), self.patch)
            if teacher is None and self.teacher_grad:  # published "active": the crops' features keep their gradient
                out["teacher"] = teacher_region_embeddings(dense_features(clip.visual, batch["crops"]), detach=False)
                return out
            with torch.no_grad():
                visual = clip.visual if teacher is None else teacher.visual
                out["teacher"] = teacher_region_embeddings(dense_features(visual, batch["crops"]))
            return out
        out["image"] = clip.encode_image(batch["images"])
        valid = batch["valid"]
        regions = out["image"].new_zeros(len(valid), out["image"].shape[1])
        texts = out["text"].new_zeros(len(valid), out["text"].shape[1])
        if len(batch["crops"]):
            regions = regions.index_put((valid.nonzero()[:, 0],), clip.encode_image(batch["crops"]).to(regions.dtype))
            texts = texts.index_put((valid.nonzero()[:, 0],), clip.encode_text(batch["region_tokens"]).to(texts.dtype))
        out.update(regions=regions, region_texts=texts)
        return out


def stage_losses(features: dict, batch: dict, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """The stage's losses (float32) and their weighted sum under 'total'."""
    f = {k: v.float() if torch.is_tensor(v) else v for k, v in features.items()}
    losses = {"global": clip_loss(f["image"], f["text"], f["logit_scale"], cfg.gather_with_grad)}
    total = cfg.global_weight * losses["global"]
    if cfg.stage == 1:
        losses["distill"] = distill_loss(f["student"], f["teacher"])
        total = total + cfg.distill_weight * losses["distill"]
    else:
        losses["region"] = region_loss(f["regions"], f["region_texts"], f["logit_scale"], batch["category_ids"],
                                       cfg.multi_positive, valid=batch["valid"])
        total = total + cfg.region_weight * losses["region"]
    losses["total"] = total
    return losses


class Teacher:
    """Stage 1's teacher: None for "active" (the student itself), else a frozen or EMA copy."""

    def __init__(self, clip: nn.Module, mode: str, momentum: float):
        self.mode, self.momentum = mode, momentum
        self.model = None
        if mode != "active":
            self.model = copy.deepcopy(clip).eval()
            for p in self.model.parameters():
                p.requires_grad_(False)

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        if self.mode != "ema":
            return
        for t, s in zip(self.model.parameters(), student.parameters()):
            t.mul_(self.momentum).add_(s.detach().to(t.dtype), alpha=1 - self.momentum)

    def state_dict(self) -> dict | None:
        return None if self.model is None else self.model.state_dict()

    def load_state_dict(self, state: dict | None) -> None:
        if self.model is not None and state is not None:
            self.model.load_state_dict(state)
