"""Stage 2's CLS-token region–category alignment.

Each object crop is encoded on its own (standard forward, CLS) → r_k; its category text
("a satellite image of {category}", or the object's own caption) is encoded → c_k. Over all K objects
of the (global) batch, with s_kl = τ · <r_k, c_l> (each rank takes its own rows, as in
`contrastive.py`; ranks must hold the same number of objects):
    contrastive:     L = ½ [ CE(s, diag) + CE(sᵀ, diag) ]
    multi-positive:  the target of row k is uniform over all l with the same category id as k,
                     L = ½ [ H(q, softmax(s)) + H(qᵀ, softmax(sᵀ)) ] with H the cross-entropy of distributions
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training.losses.contrastive import gather_with_grad, local_rows


def region_loss(region_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                category_ids: torch.Tensor | None = None, multi_positive: bool = True) -> torch.Tensor:
    local_regions = F.normalize(region_features, dim=-1)
    local_texts = F.normalize(text_features, dim=-1)
    regions, texts = gather_with_grad(local_regions), gather_with_grad(local_texts)
    scale = logit_scale.exp()
    rows = local_rows(len(local_regions), local_regions.device)
    logits_r = scale * local_regions @ texts.T  # this rank's regions against every text
    logits_t = scale * local_texts @ regions.T  # this rank's texts against every region
    if not multi_positive or category_ids is None:
        return (F.cross_entropy(logits_r, rows) + F.cross_entropy(logits_t, rows)) / 2
    ids = gather_with_grad(category_ids[:, None].float())[:, 0]
    same = (ids[rows][:, None] == ids[None, :]).float()
    targets = same / same.sum(dim=1, keepdim=True)
    per_row = -(targets * F.log_softmax(logits_r, dim=1)).sum(dim=1)
    per_col = -(targets * F.log_softmax(logits_t, dim=1)).sum(dim=1)
    return (per_row.mean() + per_col.mean()) / 2
