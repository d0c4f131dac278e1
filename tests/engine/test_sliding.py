"""Sliding-window inference equals the crop-by-crop computation; borders and small images work."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.dense import InferenceOptions, Segmenter, prepare_image
from engine.dense.forward import dense_features
from engine.boxes import Box
from engine.dense.sliding import (CropGrid, RowStrips, Workspace, crop_strips, gathered_crops, mean_strips,
                                  stacked_crops, window_starts)

CROP, STRIDE = 224, 112


def _published_starts(length: int) -> list[int]:
    """Crop origins as the published evaluation computes them (grid count, then clamp)."""
    grids = max(length - CROP + STRIDE - 1, 0) // STRIDE + 1
    return sorted({max(min(i * STRIDE + CROP, length) - CROP, 0) for i in range(grids)})


@pytest.mark.parametrize("length", [1, 100, 223, 224, 225, 335, 336, 448, 500, 1000])
def test_window_starts_follow_the_published_rule(length):
    starts = window_starts(length, CROP, STRIDE)
    assert starts == _published_starts(length)
    assert starts[-1] + min(CROP, length) == length  # the last crop ends at the border


def _crop_by_crop(model, text, image: torch.Tensor) -> torch.Tensor:
    """Average of per-crop up-sampled cosine logits, one crop at a time."""
    _, h, w = image.shape
    total = torch.zeros(text.shape[0], h, w)
    count = torch.zeros(1, h, w)
    for y in _published_starts(h):
        for x in _published_starts(w):
            piece = image[:, y:y + CROP, x:x + CROP]
            ph, pw = piece.shape[1:]
            if (ph, pw) != (CROP, CROP):  # pad to a patch multiple, feed at 224, resize back
                th, tw = -(-ph // 16) * 16, -(-pw // 16) * 16
                padded = F.pad(piece, (0, tw - pw, 0, th - ph))
                feed = F.interpolate(padded[None], size=(CROP, CROP), mode="bilinear", align_corners=False)
            else:
                th, tw, feed = ph, pw, piece[None]
            with torch.no_grad():
                feats = F.normalize(dense_features(model.clip.visual, feed)[0], dim=-1)
            logits = (feats @ text.T).permute(2, 0, 1)[None]
            logits = F.interpolate(logits, size=(th, tw), mode="bilinear", align_corners=False)[0, :, :ph, :pw]
            total[:, y:y + ph, x:x + pw] += logits
            count[:, y:y + ph, x:x + pw] += 1
    return total / count


def summed_strips(rows: RowStrips, n: int, workspace: Workspace | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The strips' sums [N, h, w] and counts [1, h, w] (`RowStrips.write_to`), in the workspace's memory if given."""
    shape = (n + 1, rows.region.h, rows.region.w)
    sums = workspace.empty(shape, "cpu") if workspace is not None else torch.empty(shape)
    rows.write_to(sums[:-1], sums[-1:])
    return sums[:-1], sums[-1:]


def accumulate_crops(model, image, text, boxes, region, workspace=None):
    """Sums and counts of the crops' logits over the region, through the engine's strips."""
    return summed_strips(crop_strips(model, image, text, CROP, boxes, region), text.shape[0], workspace)


@pytest.fixture(scope="module")
def segmenter(tiny_model):
    return Segmenter(tiny_model, "building,roof; road; tree,forest; water")


@pytest.mark.parametrize("shape", [(336, 530), (224, 224), (100, 150), (60, 400), (500, 90)],
                         ids=["large-odd", "one-crop", "smaller-than-crop", "short-wide", "tall-narrow"])
def test_sliding_equals_crop_by_crop(segmenter, shape):
    rng = np.random.default_rng(1)
    image = prepare_image(rng.integers(0, 256, (*shape, 3), dtype=np.uint8))
    got = segmenter.logits(image)
    want = _crop_by_crop(segmenter.model, segmenter.text, image)
    assert got.shape == (len(segmenter.prompts.names), *shape)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_batch_size_does_not_change_the_result(tiny_model):
    image = prepare_image(np.random.default_rng(2).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    one = Segmenter(tiny_model, "a; b; c", InferenceOptions(batch_size=1)).logits(image)
    many = Segmenter(tiny_model, "a; b; c", InferenceOptions(batch_size=5)).logits(image)
    torch.testing.assert_close(one, many, rtol=1e-5, atol=1e-6)


def test_both_ways_of_cutting_crops_give_the_same_pixels():
    """The GPU's gather and the CPU's slices cut the same crops (the gather runs on CPU tensors too)."""
    image = torch.from_numpy(np.random.default_rng(4).random((3, 300, 410), dtype=np.float32))
    boxes = CropGrid(300, 410, CROP, STRIDE).boxes()
    gathered, stacked = gathered_crops(image, boxes), stacked_crops(image, boxes)
    assert gathered.shape == (len(boxes), 3, CROP, CROP)
    assert torch.equal(gathered, stacked)
    assert torch.equal(stacked[-1], image[:, 300 - CROP:, 410 - CROP:])


def test_regions_of_the_global_grid_reassemble_the_whole(segmenter):
    """The seam the tiled GeoTIFF pipeline stands on: pieces with the global crops = one piece."""
    h, w = 400, 620
    image = prepare_image(np.random.default_rng(3).integers(0, 256, (h, w, 3), dtype=np.uint8))
    whole = segmenter.logits(image)
    grid = CropGrid(h, w, CROP, STRIDE)
    pieces = torch.zeros_like(whole)
    for region in (Box(0, 0, 150, 300), Box(0, 300, 150, 320), Box(150, 0, 250, 620)):
        boxes = grid.touching(region)
        pieces[:, region.y:region.y + region.h, region.x:region.x + region.w] = segmenter.logits(
            image, boxes=boxes, region=region)
    torch.testing.assert_close(pieces, whole, rtol=1e-5, atol=1e-6)


def test_sums_written_into_reused_memory_hide_what_it_held(segmenter):
    """A block's sums go into reused memory (a `Workspace`) that nobody zeroes: whatever it held never
    shows, and the pixels none of the block's crops covers (above and left of its first crop) hold 0."""
    h, w = 500, 620
    image = prepare_image(np.random.default_rng(6).integers(0, 256, (h, w, 3), dtype=np.uint8))
    core = Box(130, 150, 300, 400)
    owned = CropGrid(h, w, CROP, STRIDE).starting_in(core)  # first crop at (224, 224): 94 rows, 74 columns uncovered
    extent = Box(core.y, core.x, max(b.y + b.h for b in owned) - core.y, max(b.x + b.w for b in owned) - core.x)
    piece = image[:, extent.y:extent.y + extent.h, extent.x:extent.x + extent.w]
    local = [b.shifted(-extent.y, -extent.x) for b in owned]
    region = Box(0, 0, extent.h, extent.w)
    text = segmenter.text
    workspace = Workspace()
    workspace.empty((len(text) + 1, extent.h, extent.w), image.device).fill_(float("nan"))  # a used workspace
    total, count = accumulate_crops(segmenter.model, piece, text, local, region, workspace=workspace)
    fresh_total, fresh_count = accumulate_crops(segmenter.model, piece, text, local, region)
    top, left = min(b.y for b in local), min(b.x for b in local)
    assert (top, left) == (94, 74)
    assert torch.equal(total, fresh_total) and torch.equal(count, fresh_count)
    assert not total[:, :top].any() and not total[:, :, :left].any() and not count[:, :top].any()
    assert (count[:, top:, left:] >= 1).all()  # and where crops cover it, every pixel counted
    # the means a block is assembled into (`mean_strips`, in the workspace, used again: `total` is gone) likewise
    workspace.empty((len(text), extent.h, extent.w), image.device).fill_(float("inf"))
    strips = crop_strips(segmenter.model, piece, text, CROP, local, region)
    mean = mean_strips(strips, len(text), "cpu", workspace)
    fresh_mean = mean_strips(strips, len(text), "cpu")
    assert torch.equal(mean[:, top:, left:], fresh_mean[:, top:, left:])
    torch.testing.assert_close(mean[:, top:, left:], fresh_total[:, top:, left:] / fresh_count[:, top:, left:])
    assert mean[:, :top].isnan().all() and mean[:, :, :left].isnan().all()  # no crop there: no mean


def test_strips_passed_between_pieces_give_the_sums_of_one_pass(segmenter):
    """Each crop computed once by the piece holding its top-left pixel; its strips, cut to the pieces
    they reach and added there, give every piece the sums and counts of one pass over the image —
    and what a piece passes on is a small fraction of its up-sampled logits."""
    h, w = 500, 620
    image = prepare_image(np.random.default_rng(8).integers(0, 256, (h, w, 3), dtype=np.uint8))
    text, n = segmenter.text, segmenter.text.shape[0]
    grid = CropGrid(h, w, CROP, STRIDE)
    whole_total, whole_count = accumulate_crops(segmenter.model, image, text, grid.boxes(), Box(0, 0, h, w))
    pieces = [Box(0, 0, 240, 300), Box(0, 300, 240, 320), Box(240, 0, 260, 300), Box(240, 300, 260, 320)]
    received: dict[Box, list[RowStrips]] = {piece: [] for piece in pieces}
    for piece in pieces:
        owned = grid.starting_in(piece)
        strips = crop_strips(segmenter.model, image, text, CROP, owned, Box(0, 0, h, w))
        reach = Box(piece.y, piece.x, max(b.y + b.h for b in owned) - piece.y, max(b.x + b.w for b in owned) - piece.x)
        for target in pieces:
            y0, x0 = max(reach.y, target.y), max(reach.x, target.x)
            y1, x1 = min(reach.y + reach.h, target.y + target.h), min(reach.x + reach.w, target.x + target.w)
            if y1 <= y0 or x1 <= x0:
                continue
            part = strips.part(Box(y0, x0, y1 - y0, x1 - x0), copy=True)
            received[target].append(part)
            if target != piece:  # passed on: vs. the up-sampled sums and counts it stands for
                assert sum(t.numel() for pair in part.rows.values() for t in pair) < (n + 1) * (y1 - y0) * (x1 - x0) / 4
    for piece in pieces:
        assembled = RowStrips(piece.shifted(7, 9))  # any coordinates: here shifted, to check the shift too
        for part in received[piece]:
            assembled.include(part.shifted(7, 9))
        total, count = summed_strips(assembled, n)
        rows, cols = slice(piece.y, piece.y + piece.h), slice(piece.x, piece.x + piece.w)
        torch.testing.assert_close(total, whole_total[:, rows, cols], rtol=1e-5, atol=1e-6)
        assert torch.equal(count, whole_count[:, rows, cols])


@pytest.mark.parametrize("a,ph,h", [(14, 224, 224), (7, 112, 100), (40, 40, 40), (5, 130, 130)],
                         ids=["vit-b-16", "padded-small-crop", "already-at-pixels", "odd-scale"])
def test_strips_up_sampled_vertically_equal_each_strip_resized_and_added(a, ph, h):
    """The vertical pass (strips added on groups of rows, then one line per group) gives what resizing
    each strip with F.interpolate, cutting it to the crop and adding it up gives — for strips at any
    row (above the region, misaligned with the others) and crops of any shape."""
    rng = torch.Generator().manual_seed(3)
    region = Box(20, 5, 300, 37)
    strips = RowStrips(region, (a, ph, h))
    want = torch.zeros(3, region.h, region.w)
    count = torch.zeros(1, region.h, region.w)
    for top in (-30, 20, 61, 20 + h // 2, 270, 300, -500, 900):  # region coordinates (+ region.y below)
        strip, covered = torch.randn(3, a, region.w, generator=rng), torch.rand(region.w, generator=rng) + 1
        strips.rows[region.y + top] = [strip, covered]
        rows = F.interpolate(strip[None], size=(ph, region.w), mode="bilinear", align_corners=False)[0, :, :h]
        lo, hi = max(top, 0), min(top + h, region.h)
        if hi > lo:
            want[:, lo:hi] += rows[:, lo - top:hi - top]
            count[:, lo:hi] += covered
    total, counted = summed_strips(strips, 3)
    torch.testing.assert_close(total, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(counted, count)
    mean = torch.empty(3, region.h, region.w)
    coverage = strips.write_mean_to(mean)
    covered_rows = count[0, :, 0] > 0
    torch.testing.assert_close(mean[:, covered_rows], (want / count)[:, covered_rows], rtol=1e-5, atol=1e-5)
    assert bool((coverage == 0).any()) == (not covered_rows.all())


def test_progress_reports_every_crop(segmenter):
    seen = []
    image = prepare_image(np.zeros((300, 300, 3), dtype=np.uint8))
    segmenter.logits(image, progress=lambda done, total: seen.append((done, total)))
    total = len(CropGrid(300, 300, CROP, STRIDE).boxes())
    assert seen[-1] == (total, total)
