"""Each loss: value and gradient against a direct, loop-by-loop computation on small tensors."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from training.losses.contrastive import clip_loss
from training.losses.distill import distill_loss, student_region_embeddings, teacher_region_embeddings
from training.losses.region import region_loss


def _ce(row: torch.Tensor, target: int) -> torch.Tensor:
    return -(row[target] - torch.logsumexp(row, dim=0))


def test_clip_loss_matches_the_formula():
    torch.manual_seed(0)
    img = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    txt = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(math.log(10.0), dtype=torch.float64, requires_grad=True)
    got = clip_loss(img, txt, scale)
    f, g = img / img.norm(dim=1, keepdim=True), txt / txt.norm(dim=1, keepdim=True)
    s = 10.0 * f @ g.T
    want = sum(_ce(s[i], i) + _ce(s[:, i], i) for i in range(5)) / 10
    torch.testing.assert_close(got, want)
    grads = torch.autograd.grad(got, (img, txt, scale))
    wants = torch.autograd.grad(want, (img, txt), retain_graph=True)
    torch.testing.assert_close(grads[0], wants[0])
    torch.testing.assert_close(grads[1], wants[1])
    s_scaled = scale.exp() * f @ g.T  # the same loss written with the learned temperature
    with_scale = sum(_ce(s_scaled[i], i) + _ce(s_scaled[:, i], i) for i in range(5)) / 10
    torch.testing.assert_close(grads[2], torch.autograd.grad(with_scale, scale)[0])


def _bilinear(cells: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """Sample a [H, W, D] map at a continuous (y, x), cell centres at integers (RoIAlign's rule)."""
    h, w = cells.shape[:2]
    if y < -1 or y > h or x < -1 or x > w:
        return torch.zeros_like(cells[0, 0])
    y, x = min(max(y, 0.0), h - 1), min(max(x, 0.0), w - 1)
    y0, x0 = int(math.floor(y)), int(math.floor(x))
    y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
    dy, dx = y - y0, x - x0
    return ((1 - dy) * (1 - dx) * cells[y0, x0] + (1 - dy) * dx * cells[y0, x1]
            + dy * (1 - dx) * cells[y1, x0] + dy * dx * cells[y1, x1])


def _roi_mean(cells: torch.Tensor, box: list[float], patch: int) -> torch.Tensor:
    """Mean of an (h × w)-bin RoIAlign (aligned, one sample per bin when bins are under a cell)."""
    h, w = cells.shape[:2]
    x1, y1, x2, y2 = (v / patch - 0.5 for v in box)
    bh, bw = (y2 - y1) / h, (x2 - x1) / w
    ny, nx = max(1, math.ceil(bh)), max(1, math.ceil(bw))
    samples = [_bilinear(cells, y1 + i * bh + (a + 0.5) * bh / ny, x1 + j * bw + (b + 0.5) * bw / nx)
               for i in range(h) for j in range(w) for a in range(ny) for b in range(nx)]
    return torch.stack(samples).mean(0)


def test_distill_loss_pools_the_student_map_over_each_box():
    torch.manual_seed(1)
    dense = torch.randn(2, 4, 4, 6, dtype=torch.float64, requires_grad=True)  # [B, gh, gw, D], patch 16
    raw = [[[0.0, 0.0, 32.0, 32.0]], [[16.0, 32.0, 64.0, 64.0], [5.0, 3.0, 60.0, 41.0]]]
    boxes = [torch.tensor(b, dtype=torch.float64) for b in raw]
    student = student_region_embeddings(dense, boxes, patch=16)
    direct = torch.stack([_roi_mean(dense[0], raw[0][0], 16), _roi_mean(dense[1], raw[1][0], 16),
                          _roi_mean(dense[1], raw[1][1], 16)])
    torch.testing.assert_close(student, F.normalize(direct, dim=-1))
    crops = torch.randn(3, 4, 4, 6, dtype=torch.float64, requires_grad=True)
    teacher = teacher_region_embeddings(crops)
    loss = distill_loss(student, teacher)
    want = (1 - (F.normalize(direct, dim=-1) * F.normalize(crops.mean((1, 2)), dim=-1)).sum(-1)).mean()
    torch.testing.assert_close(loss, want)
    loss.backward()
    assert crops.grad is None  # the teacher takes no gradient
    g_direct, = torch.autograd.grad(want, dense)
    torch.testing.assert_close(dense.grad, g_direct)


def test_region_loss_contrastive_and_multi_positive():
    torch.manual_seed(2)
    r = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    c = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(math.log(20.0), dtype=torch.float64)
    ids = torch.tensor([3, 1, 3, 2])
    fr, fc = F.normalize(r, dim=-1), F.normalize(c, dim=-1)
    s = 20.0 * fr @ fc.T
    plain = region_loss(r, c, scale, ids, multi_positive=False)
    torch.testing.assert_close(plain, sum(_ce(s[i], i) + _ce(s[:, i], i) for i in range(4)) / 8)
    got = region_loss(r, c, scale, ids, multi_positive=True)
    want = 0
    for k in range(4):
        positives = [l for l in range(4) if ids[l] == ids[k]]
        want = want - sum(torch.log_softmax(s[k], 0)[l] for l in positives) / len(positives) / 8
        want = want - sum(torch.log_softmax(s[:, k], 0)[l] for l in positives) / len(positives) / 8
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad(got, r)[0], torch.autograd.grad(want, r)[0])


def test_region_loss_ignores_padded_slots():
    """Objects padded to fixed slots (with garbage in the padding) give the loss of the objects alone."""
    g = torch.Generator().manual_seed(7)
    r, t = torch.randn(5, 8, generator=g, requires_grad=True), torch.randn(5, 8, generator=g, requires_grad=True)
    ids = torch.tensor([0, 1, 0, 2, 1])
    scale = torch.tensor(math.log(20.0))
    slots, junk = torch.tensor([0, 2, 3, 6, 7]), torch.randn(8, 8, generator=g) * 5
    for multi in (False, True):
        want = region_loss(r, t, scale, ids, multi_positive=multi)
        pr, pt = junk.clone().index_put((slots,), r), junk.clone().index_put((slots,), t)
        pids = torch.full((8,), 9).index_put((slots,), ids)
        valid = torch.zeros(8, dtype=torch.bool).index_put((slots,), torch.tensor(True))
        got = region_loss(pr, pt, scale, pids, multi_positive=multi, valid=valid)
        torch.testing.assert_close(got, want)
        grad_want = torch.autograd.grad(want, (r, t))
        grad_got = torch.autograd.grad(got, (r, t))
        for a, b in zip(grad_got, grad_want):
            torch.testing.assert_close(a, b)
    empty = region_loss(junk, junk, scale, pids, valid=torch.zeros(8, dtype=torch.bool))
    assert float(empty) == 0.0
