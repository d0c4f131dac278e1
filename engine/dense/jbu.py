"""A learned joint bilateral up-sampler (JBU) for patch features, guided by the image.

SimFeatUp (SegEarth-OV, CVPR 2025, after FeatUp's JBU) turns the [B, D, gh, gw] patch features of
a crop into features at 16× the grid, guided by the normalised crop image [B, 3, H, W]. Each of four
2× steps does:

    guidance  g = adaptive_avg_pool(image, 2h × 2w)
    range     r = softmax over the (2ρ+1)² window offsets of  exp(range_temp) · ⟨P(g)[x], P(g)[x+o]⟩
              (P: 1×1 conv → GELU → 1×1 conv to 32 channels, reflect padding at the border)
    spatial   s = exp(−|o|² / 2σ²)  with offsets o on a [−1, 1]² grid (σ = sigma_spatial)
    kernel    k = r·s / Σ(r·s) + 0.1 · F([r·s / Σ, g])   (F: 1×1 conv → GELU → 1×1 conv)
    output    out[x] = Σ_o k_o[x] · bicubic_2×(features)[x+o]   (reflect padding)

and after the fourth step features += 0.1 · conv1×1(features). `jbu_one` applies one step module
(ρ = 5) four times; `jbu_stack` has four step modules (ρ = 3). Parameter names and shapes follow the
released checkpoints (`up.*` or `up1..up4.*`, then `fixup_proj.1.*`), so they load strictly; the
dropout layers of the original sit at the same indices and do nothing at inference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

KEY_DIM = 32  # channels of the range projection in the released models
GUIDANCE_DIM = 3  # RGB
STEPS = 4  # four 2× steps: 16× the patch grid
ROW_TILE = 16  # output rows per pass of the windowed sum (keeps the working set small on CPUs)


def _window_sum(padded: torch.Tensor, weights: torch.Tensor, diameter: int) -> torch.Tensor:
    """out[b, c, y, x] = Σ_p weights[b, p, y, x] · padded[b, c, y + p // d, x + p % d].

    `padded` is [B, C, H + d − 1, W + d − 1], `weights` [B, d², H, W]; returns [B, C, H, W]. Works on
    row tiles so that a tile and its window stay in cache; memory is one output tensor.
    """
    b, c = padded.shape[:2]
    h, w = weights.shape[-2:]
    out = padded.new_zeros(b, c, h, w)
    for y0 in range(0, h, ROW_TILE):
        y1 = min(h, y0 + ROW_TILE)
        tile = out[:, :, y0:y1]
        for p in range(diameter * diameter):
            dy, dx = divmod(p, diameter)
            tile.addcmul_(padded[:, :, y0 + dy:y1 + dy, dx:dx + w], weights[:, p:p + 1, y0:y1])
    return out


class JBUStep(nn.Module):
    """One guided 2× step with a learned range kernel (window radius `radius`)."""

    def __init__(self, feat_dim: int, radius: int, key_dim: int = KEY_DIM, guidance_dim: int = GUIDANCE_DIM):
        super().__init__()
        self.feat_dim, self.radius, self.key_dim = feat_dim, radius, key_dim
        self.diameter = 2 * radius + 1
        taps = self.diameter ** 2
        self.range_temp = nn.Parameter(torch.tensor(0.0))
        self.sigma_spatial = nn.Parameter(torch.tensor(1.0))
        self.range_proj = nn.Sequential(nn.Conv2d(guidance_dim, key_dim, 1), nn.GELU(), nn.Dropout2d(0.1),
                                        nn.Conv2d(key_dim, key_dim, 1))
        self.fixup_proj = nn.Sequential(nn.Conv2d(guidance_dim + taps, taps, 1), nn.GELU(), nn.Dropout2d(0.1),
                                        nn.Conv2d(taps, taps, 1))

    def spatial_kernel(self, device) -> torch.Tensor:
        """[1, d², 1, 1] Gaussian of the offset on a [−1, 1]² grid."""
        axis = torch.linspace(-1, 1, self.diameter, device=device)
        dist2 = axis[:, None] ** 2 + axis[None, :] ** 2
        return torch.exp(-dist2 / (2 * self.sigma_spatial ** 2)).reshape(1, -1, 1, 1)

    def range_kernel(self, guidance: torch.Tensor) -> torch.Tensor:
        """[B, d², H, W] softmax over window offsets of the projected guidance's dot products."""
        keys = self.range_proj(guidance)
        h, w = keys.shape[-2:]
        padded = F.pad(keys, [self.radius] * 4, mode="reflect")
        d = self.diameter
        scores = torch.stack([(padded[:, :, dy:dy + h, dx:dx + w] * keys).sum(1)
                              for dy in range(d) for dx in range(d)], dim=1)
        temperature = self.range_temp.exp().clamp(1e-4, 1e4)
        return torch.softmax(temperature * scores, dim=1)

    def forward(self, features: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        """features [B, D, h, w], guidance [B, 3, H, W] (the output size) → [B, D, H, W]."""
        h, w = guidance.shape[-2:]
        kernel = self.range_kernel(guidance) * self.spatial_kernel(guidance.device)
        kernel = kernel / kernel.sum(1, keepdim=True).clamp(min=1e-7)
        kernel = kernel + 0.1 * self.fixup_proj(torch.cat([kernel, guidance], dim=1))
        up = F.interpolate(features, size=(h, w), mode="bicubic", align_corners=False)
        padded = F.pad(up, [self.radius] * 4, mode="reflect")
        return _window_sum(padded, kernel.to(padded.dtype), self.diameter)


class JBUUpsampler(nn.Module):
    """Four guided 2× steps and a residual 1×1 projection: features [B, D, h, w] → [B, D, 16h, 16w]."""

    kinds = {"jbu_one": 5, "jbu_stack": 3}  # kind → window radius

    def __init__(self, feat_dim: int, kind: str = "jbu_one"):
        super().__init__()
        if kind not in self.kinds:
            raise ValueError(f"unknown up-sampler kind {kind!r}")
        self.kind, self.feat_dim = kind, feat_dim
        radius = self.kinds[kind]
        if kind == "jbu_one":
            self.up = JBUStep(feat_dim, radius)
        else:
            self.up1, self.up2, self.up3, self.up4 = (JBUStep(feat_dim, radius) for _ in range(STEPS))
        self.fixup_proj = nn.Sequential(nn.Dropout2d(0.2), nn.Conv2d(feat_dim, feat_dim, 1))

    @property
    def radius(self) -> int:
        return self.kinds[self.kind]

    def steps(self) -> list[JBUStep]:
        return [self.up] * STEPS if self.kind == "jbu_one" else [self.up1, self.up2, self.up3, self.up4]

    def forward(self, features: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        if features.shape[1] != self.feat_dim:
            raise ValueError(f"up-sampler expects {self.feat_dim}-d features, got {features.shape[1]}")
        for step in self.steps():
            h, w = features.shape[-2:]
            features = step(features, F.adaptive_avg_pool2d(image, (2 * h, 2 * w)))
        return features + 0.1 * self.fixup_proj(features)
