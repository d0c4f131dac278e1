"""The dense forward equals a plain, independent computation of FarSLIP's formula."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from engine.dense.forward import dense_features


def _layer_norm(x, w, b):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + 1e-5) * w + b


def _reference_dense(sd: dict, image: torch.Tensor, heads: int, layers: int, patch: int) -> torch.Tensor:
    """Straight from the formula, token by token, with nothing from open_clip but the weights."""
    c = sd["visual.conv1.weight"].shape[0]
    gh, gw = image.shape[1] // patch, image.shape[2] // patch
    tokens = [sd["visual.class_embedding"]]
    for i in range(gh):
        for j in range(gw):
            piece = image[:, i * patch:(i + 1) * patch, j * patch:(j + 1) * patch]
            tokens.append((sd["visual.conv1.weight"] * piece).sum(dim=(1, 2, 3)))
    x = torch.stack(tokens)
    pos = sd["visual.positional_embedding"]
    g = int(math.isqrt(pos.shape[0] - 1))
    if (g, g) != (gh, gw):
        grid = pos[1:].T.reshape(1, c, g, g)
        grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False).reshape(c, -1).T
        pos = torch.cat([pos[:1], grid])
    x = x + pos
    x = _layer_norm(x, sd["visual.ln_pre.weight"], sd["visual.ln_pre.bias"])
    hd = c // heads
    for layer in range(layers):
        p = f"visual.transformer.resblocks.{layer}."
        y = _layer_norm(x, sd[p + "ln_1.weight"], sd[p + "ln_1.bias"])
        qkv = y @ sd[p + "attn.in_proj_weight"].T + sd[p + "attn.in_proj_bias"]
        q, k, v = qkv[:, :c], qkv[:, c:2 * c], qkv[:, 2 * c:]
        outs = []
        for h in range(heads):
            qh, kh, vh = (z[:, h * hd:(h + 1) * hd] for z in (q, k, v))
            if layer < layers - 1:  # standard attention
                attn = torch.softmax(qh @ kh.T / math.sqrt(hd), dim=-1)
            else:  # FarSLIP's last block: q·q + k·k + v·v
                attn = sum(torch.softmax(z @ z.T / math.sqrt(hd), dim=-1) for z in (qh, kh, vh))
            outs.append(attn @ vh)
        a = torch.cat(outs, dim=-1) @ sd[p + "attn.out_proj.weight"].T + sd[p + "attn.out_proj.bias"]
        if layer < layers - 1:
            x = x + a
            y = _layer_norm(x, sd[p + "ln_2.weight"], sd[p + "ln_2.bias"])
            hidden = y @ sd[p + "mlp.c_fc.weight"].T + sd[p + "mlp.c_fc.bias"]
            hidden = hidden * torch.sigmoid(1.702 * hidden)  # QuickGELU
            x = x + hidden @ sd[p + "mlp.c_proj.weight"].T + sd[p + "mlp.c_proj.bias"]
        else:
            x = a  # residual and MLP dropped
    x = _layer_norm(x, sd["visual.ln_post.weight"], sd["visual.ln_post.bias"]) @ sd["visual.proj"]
    return x[1:].reshape(gh, gw, -1)


@pytest.mark.parametrize("size", [(224, 224), (96, 160)], ids=["native-grid", "interpolated-positions"])
def test_dense_forward_matches_the_formula(tiny_clip, size):
    torch.manual_seed(0)
    image = torch.randn(3, *size, dtype=torch.float64)
    sd = {k: v.double() for k, v in tiny_clip.state_dict().items()}
    want = _reference_dense(sd, image, heads=2, layers=2, patch=16)
    visual = tiny_clip.visual.double()
    try:
        with torch.no_grad():
            got = dense_features(visual, image[None])[0]
    finally:
        tiny_clip.visual.float()
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_cls_of_the_dense_pass_is_the_standard_image_embedding(tiny_clip):
    torch.manual_seed(0)
    images = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        _, cls = dense_features(tiny_clip.visual, images, with_cls=True)
        standard = tiny_clip.visual(images)
    torch.testing.assert_close(cls, standard, rtol=1e-5, atol=1e-5)


def test_dense_forward_carries_gradients_for_training(tiny_clip):
    images = torch.randn(1, 3, 64, 64)
    out = dense_features(tiny_clip.visual, images)
    out.sum().backward()
    last = tiny_clip.visual.transformer.resblocks[-1]
    assert last.attn.in_proj_weight.grad is not None and last.attn.in_proj_weight.grad.abs().sum() > 0
    assert last.mlp.c_fc.weight.grad is None  # the dropped MLP takes no part
    tiny_clip.zero_grad(set_to_none=True)
