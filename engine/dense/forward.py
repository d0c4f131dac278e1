"""FarSLIP's dense visual forward: one embedding per patch, in the text embedding space.

Blocks 1..L-1 of the ViT run unchanged. In the last block the attention is replaced by
    A = softmax(q qᵀ · s) + softmax(k kᵀ · s) + softmax(v vᵀ · s),   s = head_dim^-½
and its output out_proj(A · v) is taken alone: the block's residual and MLP are dropped. Then
ln_post and proj give one feature per token (the CLS row of this output is the image-level
embedding the global-bias option uses, as SegEarth-OV / RS-OVSS take it). Positional embeddings are
interpolated (bicubic) when the input's patch grid differs from the one the model was trained on.

The same function serves inference (no grad) and stage-1 training (student and teacher, grad).
`model_dense` is what inference calls: the plain function, or its `torch.compile`d form once
`compile_dense` was called on the model (`--compile`: 20-27 % more crops/s on a GPU after 10-20 s of
compiling; worth it for large runs and a server, not for one canvas).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn


def interpolate_positions(pos: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """Positional embeddings [1 + g*g, C] resized to a (gh, gw) patch grid (CLS position kept)."""
    n = pos.shape[0] - 1
    g = int(round(math.sqrt(n)))
    if (g, g) == tuple(grid_hw):
        return pos
    cls_pos, patch_pos = pos[:1], pos[1:]
    patch_pos = patch_pos.reshape(1, g, g, -1).permute(0, 3, 1, 2)
    work = patch_pos.float() if patch_pos.dtype in (torch.float16, torch.bfloat16) else patch_pos
    patch_pos = F.interpolate(work, size=grid_hw, mode="bicubic", align_corners=False)
    patch_pos = patch_pos.to(pos.dtype).permute(0, 2, 3, 1).reshape(-1, pos.shape[1])
    return torch.cat([cls_pos, patch_pos])


def _tokens_before_last_block(visual: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Run patch embedding, positions, ln_pre and blocks 1..L-1. Returns tokens [B, 1+N, C] and grid."""
    x = visual.conv1(images.to(visual.conv1.weight.dtype))
    grid = (x.shape[-2], x.shape[-1])
    x = x.flatten(2).transpose(1, 2)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1)
    x = x + interpolate_positions(visual.positional_embedding, grid).to(x.dtype)
    x = visual.patch_dropout(x)
    x = visual.ln_pre(x)
    blocks = visual.transformer.resblocks
    batch_first = getattr(visual.transformer, "batch_first", True)
    if not batch_first:
        x = x.transpose(0, 1)
    for block in blocks[:-1]:
        x = block(x)
    if not batch_first:
        x = x.transpose(0, 1)
    return x, grid


def _self_self_attention(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """out_proj(softmax(qqᵀs)+softmax(kkᵀs)+softmax(vvᵀs)) · v for a pre-LN'd input x [B, T, C]."""
    attn = block.attn
    b, t, c = x.shape
    heads = attn.num_heads
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (z.reshape(b, t, heads, c // heads).transpose(1, 2) for z in (q, k, v))
    scale = (c // heads) ** -0.5
    weights = sum(torch.softmax((z @ z.transpose(-2, -1)) * scale, dim=-1) for z in (q, k, v))
    out = (weights @ v).transpose(1, 2).reshape(b, t, c)
    return attn.out_proj(out)


def _project(visual: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = visual.ln_post(x)
    return x @ visual.proj if visual.proj is not None else x


def dense_features(visual: nn.Module, images: torch.Tensor, with_cls: bool = False, dense_cls: bool = False):
    """Patch embeddings [B, gh, gw, D] (not normalised) of normalised images [B, 3, H, W].

    With `with_cls`, also the standard CLS embedding [B, D] (the unchanged last block, i.e. what
    `visual(images)` gives), computed from the same first L-1 blocks: the image embedding training's
    contrastive loss uses. With `dense_cls`, instead the CLS row of the dense path itself (the modified
    last block's output, ln_post, proj), which costs nothing extra: the image-level embedding the
    global-bias option subtracts, as SegEarth-OV and RS-OVSS compute it (`output_cls_token`: the
    pooled token of the same custom-attention output as the patches).
    """
    if with_cls and dense_cls:
        raise ValueError("dense_features: ask for the standard CLS (with_cls) or the dense one (dense_cls), not both")
    x, (gh, gw) = _tokens_before_last_block(visual, images)
    last = visual.transformer.resblocks[-1]
    dense = _project(visual, _self_self_attention(last, last.ln_1(x)))
    patches = dense[:, 1:].reshape(x.shape[0], gh, gw, -1)
    if dense_cls:
        return patches, dense[:, 0]
    if not with_cls:
        return patches
    y = x + last.ls_1(last.attention(last.ln_1(x)))
    y = y + last.ls_2(last.mlp(last.ln_2(y)))
    cls = _project(visual, y[:, 0])
    return patches, cls


def model_dense(model, images: torch.Tensor, with_cls: bool = False, dense_cls: bool = False):
    """`dense_features` of a LoadedModel's vision tower, compiled when `compile_dense` was called."""
    if model.dense_forward is not None:
        return model.dense_forward(images, with_cls=with_cls, dense_cls=dense_cls)
    return dense_features(model.clip.visual, images, with_cls=with_cls, dense_cls=dense_cls)


def compile_dense(model, mode: str | None = None) -> None:
    """Compile the model's dense forward with `torch.compile` (batch size dynamic, so one compilation
    serves every batch). Compiling happens on the first call."""
    model.dense_forward = torch.compile(functools.partial(dense_features, model.clip.visual), dynamic=True,
                                        mode=mode)
