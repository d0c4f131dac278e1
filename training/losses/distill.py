"""Stage 1's patch-to-patch self-distillation.

For each image and each local crop box b (pixels):
    student: the whole image's dense patch map P [D, gh, gw] (FarSLIP's dense forward),
             RoIAlign(P, b / patch, output = (gh, gw), spatial_scale 1, sampling_ratio −1, aligned=True),
             mean over the output cells, L2-normalised  → s_b
    teacher: the crop resized to the model's input and encoded on its own with the same dense path,
             its patch tokens averaged, L2-normalised  → t_b
             (the published "active" teacher keeps t_b's gradient: the student is pulled from both sides;
             `detach` stops it, as the EMA and frozen teachers always do)
    L = mean over all boxes of (1 − <s_b, t_b>)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align


def student_region_embeddings(dense: torch.Tensor, boxes: list[torch.Tensor], patch: int) -> torch.Tensor:
    """dense [B, gh, gw, D] patch features; boxes[i] [K_i, 4] pixel boxes of image i → [ΣK, D] unit vectors."""
    feature_map = dense.permute(0, 3, 1, 2)  # [B, D, gh, gw]
    gh, gw = feature_map.shape[-2:]
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i), device=dense.device, dtype=dense.dtype),
                                 b.to(dense) / patch], dim=1) for i, b in enumerate(boxes)])
    pooled = roi_align(feature_map, rois, output_size=(gh, gw), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    return F.normalize(pooled.mean(dim=(2, 3)), dim=-1)


def teacher_region_embeddings(dense_crops: torch.Tensor, detach: bool = True) -> torch.Tensor:
    """dense [ΣK, gh, gw, D] of the crops encoded on their own → [ΣK, D] unit vectors."""
    if detach:
        dense_crops = dense_crops.detach()
    return F.normalize(dense_crops.mean(dim=(1, 2)), dim=-1)


def distill_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return (1 - (student * teacher).sum(dim=-1)).mean()
