"""Stage 2's CLS-token region–category alignment.

Each object crop is encoded on its own (standard forward, CLS) → r_k; its category text
("a satellite image of {category}", or the object's own caption) is encoded → c_k. Images hold
different numbers of objects, so each rank pads its objects to a fixed count (batch × max_boxes) and
passes `valid`; padded rows and columns take no part. Over the K valid objects of the global batch,
with s_kl = τ · <r_k, c_l> (each rank takes its own rows, as in `contrastive.py`):
    contrastive:     L = ½ [ CE(s, diag) + CE(sᵀ, diag) ]
    multi-positive:  the target of row k is uniform over all l with the same category id as k,
                     L = ½ [ H(q, softmax(s)) + H(qᵀ, softmax(sᵀ)) ] with H the cross-entropy of distributions
Both means run over the K valid objects of the whole global batch: each rank sums its own rows and
divides by K / world size, so that DDP's averaging of gradients over ranks gives exactly the
single-process loss even when ranks hold different numbers of objects.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from training.losses.contrastive import distributed, gather_with_grad, local_rows


def region_loss(region_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                category_ids: torch.Tensor | None = None, multi_positive: bool = True,
                valid: torch.Tensor | None = None) -> torch.Tensor:
    local_regions = F.normalize(region_features, dim=-1)
    local_texts = F.normalize(text_features, dim=-1)
    if valid is None:
        valid = torch.ones(len(local_regions), dtype=torch.bool, device=local_regions.device)
    regions, texts = gather_with_grad(local_regions), gather_with_grad(local_texts)
    all_valid = gather_with_grad(valid[:, None].float())[:, 0].bool()
    rows = local_rows(len(local_regions), local_regions.device)[valid]
    if int(all_valid.sum()) == 0:  # no object anywhere in the batch: a zero that keeps the graph
        return (region_features.sum() + text_features.sum()) * 0.0
    scale = logit_scale.exp()
    logits_r = (scale * local_regions[valid] @ texts.T).masked_fill(~all_valid[None, :], float("-inf"))
    logits_t = (scale * local_texts[valid] @ regions.T).masked_fill(~all_valid[None, :], float("-inf"))
    if not multi_positive or category_ids is None:
        per_row = F.cross_entropy(logits_r, rows, reduction="none")
        per_col = F.cross_entropy(logits_t, rows, reduction="none")
    else:
        ids = gather_with_grad(category_ids[:, None].double())[:, 0]
        same = ((ids[rows][:, None] == ids[None, :]) & all_valid[None, :]).float()
        targets = same / same.sum(dim=1, keepdim=True)
        per_row = -(targets * F.log_softmax(logits_r, dim=1).masked_fill(same == 0, 0.0)).sum(dim=1)
        per_col = -(targets * F.log_softmax(logits_t, dim=1).masked_fill(same == 0, 0.0)).sum(dim=1)
    world = dist.get_world_size() if distributed() else 1
    per_rank_share = all_valid.sum() / world
    return (per_row.sum() + per_col.sum()) / 2 / per_rank_share
