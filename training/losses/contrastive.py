"""Global image–text contrastive loss (CLIP's InfoNCE), with features gathered over all ranks.

    s_ij = τ · <f_i, g_j>   (f, g unit vectors; τ = exp(logit_scale), the learned temperature)
    L = ½ [ CE(s, diag) over rows + CE(sᵀ, diag) over rows ]

Under DDP each rank computes the rows of its local batch against the features of every rank,
gathered with an autograd-aware all-gather (gradients flow back to the rank that made them). DDP's
averaging of the ranks' gradients then gives exactly the gradient of a single-process run on the
global batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(features: torch.Tensor) -> torch.Tensor:
    """All ranks' features concatenated in rank order, differentiable across ranks."""
    if not distributed():
        return features
    from torch.distributed._functional_collectives import all_gather_single_autograd

    # the backward pass reduce-scatters (sums) the gradients back to the rank that made each row
    return all_gather_single_autograd(features.contiguous(), gather_dim=0, group=dist.group.WORLD)


def local_rows(count: int, device) -> torch.Tensor:
    """Indices of this rank's rows in the gathered batch (equal local batch sizes)."""
    offset = dist.get_rank() * count if distributed() else 0
    return torch.arange(count, device=device) + offset


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """The loss of this rank's rows against the global batch (mean over the local rows)."""
    image_features = F.normalize(image_features, dim=-1)
    text_features = F.normalize(text_features, dim=-1)
    all_images, all_texts = gather_with_grad(image_features), gather_with_grad(text_features)
    scale = logit_scale.exp()
    labels = local_rows(image_features.shape[0], image_features.device)
    logits_per_image = scale * image_features @ all_texts.T
    logits_per_text = scale * text_features @ all_images.T
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
