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


def _window_sum(padded: torch.Tensor, weights: torch.Tensor, diameter: int) -> torch.Tensor:
    """out[b, c, y, x] = Σ_p weights[b, p, y, x] · padded[b, c, y + p // d, x + p % d].

    `padded` is [B, C, H + d − 1, W + d − 1], `weights` [B, d², H, W]; returns [B, C, H, W]. One
    multiply-add per offset over the whole map (memory: one output tensor; faster on CPUs than tiling
    or unfolding the window).
    """
    b, c = padded.shape[:2]
    h, w = weights.shape[-2:]
    out = padded.new_zeros(b, c, h, w)
    for p in range(diameter * diameter):
        dy, dx = divmod(p, diameter)
        out.addcmul_(padded[:, :, dy:dy + h, dx:dx + w], weights[:, p:p + 1])
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

    def _check(self, features: torch.Tensor) -> None:
        if features.shape[1] != self.feat_dim:
            raise ValueError(f"up-sampler expects {self.feat_dim}-d features, got {features.shape[1]}")

    def spatial(self, features: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """The four guided steps alone: [B, C, h, w] → [B, C, 16h, 16w] for any number of channels C.
        Linear in `features` and the same for every channel (the kernels depend on the image only)."""
        for step in self.steps():
            h, w = features.shape[-2:]
            features = step(features, F.adaptive_avg_pool2d(image, (2 * h, 2 * w)))
        return features

    def forward(self, features: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        self._check(features)
        x = self.spatial(features, image)
        return x + 0.1 * self.fixup_proj(x)

    def cosine(self, features: torch.Tensor, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Cosine similarity [B, N, 16h, 16w] of the up-sampled features with unit text embeddings [N, D]:
        normalize(forward(features, image)) · text.

        When the patch grid has fewer cells P = h·w than features have channels D (ViT-B/16: 196 < 512),
        this is computed exactly on a P-dimensional basis: features = Q·R (QR per crop), and since the
        steps act on every channel alike, up-sampled = M·Q·spatial(R) + c with M = I + 0.1·W and
        c = 0.1·bias of the output projection; the dot products and the norm follow from M·Q and its
        Gram matrix, so the steps run on P channels instead of D and no D×D projection runs per pixel.
        """
        self._check(features)
        b, d, h, w = features.shape
        p = h * w
        if p >= d:
            return torch.einsum("bdhw,nd->bnhw", F.normalize(self(features, image), dim=1), text)
        q, r = torch.linalg.qr(features.reshape(b, d, p))  # q [B, D, P], r [B, P, P]
        z = self.spatial(r.reshape(b, p, h, w), image)
        out_hw = z.shape[-2:]
        z = z.flatten(2)  # [B, P, HW]
        conv = self.fixup_proj[1]
        m = torch.eye(d, device=features.device, dtype=features.dtype) + 0.1 * conv.weight[:, :, 0, 0]
        c = 0.1 * conv.bias
        a = m @ q  # [B, D, P]
        dots = (text @ a) @ z + (text @ c)[None, :, None]  # [B, N, HW]
        at = a.transpose(1, 2)
        squared = (z * ((at @ a) @ z)).sum(1) + 2 * ((at @ c)[:, :, None] * z).sum(1) + c @ c
        norm = squared.clamp_min(0).sqrt().clamp_min(1e-12)
        return (dots / norm[:, None]).reshape(b, -1, *out_hw)
