"""Global image–text contrastive loss (CLIP's InfoNCE), with features gathered over all ranks.

    s_ij = τ · <f_i, g_j>   (f, g unit vectors; τ = exp(logit_scale), the learned temperature)
    L = ½ [ CE(s, diag) over rows + CE(sᵀ, diag) over rows ]

Two ways to spread it over DDP ranks (`gather_with_grad`):

    True    each rank computes the rows of its local batch against the features of every rank,
            gathered with an autograd-aware all-gather (gradients flow back to the rank that made
            them). DDP's averaging of the ranks' gradients then gives exactly the gradient of a
            single-process run on the global batch, on any number of GPUs.
    False   open_clip's (published) way: the features are gathered without gradient and each rank's
            own ones put back in its slice; every rank computes the whole global-batch loss (the same
            value as one process), but only its own features carry gradient. After DDP's averaging
            the feature gradients are 1/world of the single-process ones while the temperature's is
            whole — the balance against the other losses shifts with the number of GPUs.
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


def gather_local_live(features: torch.Tensor) -> torch.Tensor:
    """All ranks' features in rank order; only this rank's slice carries gradient (open_clip's
    `gather_features` with gather_with_grad off and local_loss off)."""
    if not distributed():
        return features
    parts = [torch.empty_like(features) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, features.detach().contiguous())
    parts[dist.get_rank()] = features
    return torch.cat(parts)


def local_rows(count: int, device) -> torch.Tensor:
    """Indices of this rank's rows in the gathered batch (equal local batch sizes)."""
    offset = dist.get_rank() * count if distributed() else 0
    return torch.arange(count, device=device) + offset


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
              exact_gather: bool = True) -> torch.Tensor:
    """With `exact_gather` (setting gather_with_grad): the loss of this rank's rows against the global batch (mean over the local
    rows); without: the whole global batch's loss, open_clip's way (see the module docstring)."""
    image_features = F.normalize(image_features, dim=-1)
    text_features = F.normalize(text_features, dim=-1)
    if not exact_gather:
        all_images, all_texts = gather_local_live(image_features), gather_local_live(text_features)
        logits = logit_scale.exp() * all_images @ all_texts.T
        labels = torch.arange(len(logits), device=logits.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    all_images, all_texts = gather_with_grad(image_features), gather_with_grad(text_features)
    scale = logit_scale.exp()
    labels = local_rows(image_features.shape[0], image_features.device)
    logits_per_image = scale * image_features @ all_texts.T
    logits_per_text = scale * text_features @ all_images.T
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
