"""The FarSLIP network: open_clip's CLIP with QuickGELU and optional Long-CLIP text positions.

Long-CLIP (context 248): the text position term is `pe * mask1 + pe_res * mask2`, mask1 = 1 on
positions 0-19 and mask2 = 1 on positions 20-247, exactly as the FarSLIP release stores it
(`positional_embedding`, `positional_embedding_res`, buffers `mask1`, `mask2`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from open_clip.transformer import text_global_pool
from torch import nn

from engine.models.registry import arch_config

CLIP_CONTEXT = 77  # text positions of CLIP's text tower, the fewest any FarSLIP model reads
LONG_CONTEXT = 248
LONG_KEEP = 20  # leading positions kept from the 77-position tower


class FarSLIPCLIP(CLIP):
    """open_clip CLIP whose text tower may carry Long-CLIP positions."""

    def __init__(self, embed_dim: int, vision_cfg: dict, text_cfg: dict, long_clip: bool = False, **kwargs):
        text_cfg = dict(text_cfg)
        if long_clip:
            text_cfg["context_length"] = LONG_CONTEXT
        super().__init__(embed_dim, vision_cfg, text_cfg, quick_gelu=True, **kwargs)
        self.long_clip = long_clip
        if long_clip:
            width = self.positional_embedding.shape[1]
            self.positional_embedding_res = nn.Parameter(self.positional_embedding.detach().clone())
            mask1 = torch.zeros(LONG_CONTEXT, 1)
            mask1[:LONG_KEEP] = 1
            self.register_buffer("mask1", mask1)
            self.register_buffer("mask2", 1 - mask1)
            assert self.positional_embedding_res.shape == (LONG_CONTEXT, width)

    def unsaved_buffers(self) -> set[str]:
        """Buffers that state dicts leave out (open_clip's causal mask `attn_mask`)."""
        return {name for name, _ in self.named_buffers()} - set(self.state_dict())

    def rebuild_causal_mask(self) -> None:
        """Fill the text tower's causal mask as open_clip builds it (-inf above the diagonal), after
        the network was given uninitialised memory."""
        if self.attn_mask is not None:
            n = self.attn_mask.shape[0]
            self.attn_mask = torch.full((n, n), float("-inf"), device=self.attn_mask.device).triu_(1)

    @property
    def input_size(self) -> int:
        """Side of the square input image in pixels (224 for ViT-B)."""
        return _side(self.visual.image_size)

    @property
    def patch(self) -> int:
        """Side of a patch in pixels (16 or 32)."""
        return _side(self.visual.patch_size)

    def text_positions(self) -> torch.Tensor:
        """The position term added to the token embeddings ([context, width])."""
        if self.long_clip:
            return self.positional_embedding * self.mask1 + self.positional_embedding_res * self.mask2
        return self.positional_embedding

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Text embeddings. The causal tower's output at the end-of-text token (the highest token id)
        depends only on the tokens up to it, so the padding after the longest text is cut off first:
        the same result, several times faster for short prompts (and ~3x more for Long-CLIP)."""
        cast_dtype = self.transformer.get_cast_dtype()
        length = text.shape[1]
        if self.text_pool_type == "argmax" and self.attn_mask is not None and text.numel():
            length = int(text.argmax(dim=-1).max()) + 1
            text = text[:, :length]
        x = self.token_embedding(text).to(cast_dtype)
        x = x + self.text_positions()[:length].to(cast_dtype)
        mask = self.attn_mask[:length, :length] if self.attn_mask is not None else None
        x = self.transformer(x, attn_mask=mask)
        x = self.ln_final(x)
        x = text_global_pool(x, text, self.text_pool_type, eos_token_id=getattr(self, "text_eos_id", None))
        if self.text_projection is not None:
            x = self.text_projection(x) if isinstance(self.text_projection, nn.Linear) else x @ self.text_projection
        return F.normalize(x, dim=-1) if normalize else x


def _side(size) -> int:
    """open_clip keeps sizes as an int or an (h, w) pair; FarSLIP's are square."""
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def build_clip(arch: str, long_clip: bool = False) -> FarSLIPCLIP:
    """A randomly initialised FarSLIP network of the given architecture."""
    cfg = arch_config(arch)
    return FarSLIPCLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"], long_clip=long_clip)


def stretch_text_positions(pe77: torch.Tensor, keep: int = LONG_KEEP, factor: int = 4) -> torch.Tensor:
    """Long-CLIP initialisation: keep the first `keep` positions, interpolate the rest `factor`x.

    77 positions become keep + factor * (77 - keep) = 248. Between consecutive old positions the
    new ones are linear blends; past the last one the trend of the last two is continued.
    """
    length, width = pe77.shape
    out = pe77.new_zeros(keep + factor * (length - keep), width)
    out[:keep] = pe77[:keep]
    for i in range(keep, length):
        cur = pe77[i]
        nxt = pe77[i + 1] if i + 1 < length else pe77[i] + (pe77[i] - pe77[i - 1])
        for j in range(factor):
            out[keep + factor * (i - keep) + j] = cur + (nxt - cur) * j / factor
    return out


def to_long_clip(clip: FarSLIPCLIP, arch: str) -> FarSLIPCLIP:
    """A Long-CLIP copy of a 77-position network: every weight kept, the text positions stretched to
    248 (both position tables start from the stretched one, so positions 0–19 are the originals)."""
    if clip.long_clip:
        return clip
    long = build_clip(arch, long_clip=True)
    state = {k: v for k, v in clip.state_dict().items() if k != "positional_embedding"}
    stretched = stretch_text_positions(clip.positional_embedding.detach())
    state.update(positional_embedding=stretched, positional_embedding_res=stretched.clone(),
                 mask1=long.mask1, mask2=long.mask2)
    long.load_state_dict(state, strict=True)
    return long.to(clip.positional_embedding.device)
