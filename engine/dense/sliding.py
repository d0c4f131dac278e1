"""Sliding-window dense logits: crops of the model's input size, averaged where they overlap.

The protocol (the published evaluation's): crops are `crop` px with stride `stride` (224/112 for
ViT-B); the last crop of a row or column is shifted inward to end at the border. Each crop's
per-patch cosine logits (patch embedding · name embedding) are bilinearly up-sampled to the crop's
pixels and summed; the sum is divided by the number of crops covering each pixel. A crop smaller
than `crop` (an image side under `crop`) is padded with zeros (the mean colour) to a patch multiple,
resized to crop × crop, and its logits are resized back to the padded size, then the padding is cut
off. Where the padding goes is `pad`: "centre" splits it as the published evaluation does
(RS-OVSS `compute_padsize`: left = ⌊pad_w/2⌋, top = ⌊pad_h/2⌋, the rest right/bottom; the logits cut
at [top:top+h, left:left+w]) and is what `farslip eval` uses; "end" (the default of the functions
here, so of segmentation, teaching and the raster pipeline) puts it all at the bottom/right. The two
differ only for images with a side under `crop`.

How it runs, all on the model's device and without a Python step per crop:
- the image arrives normalised on the device (`normalise`, pixels uploaded once per block);
- each batch of crops is cut out with one gather and run through the network;
- bilinear up-sampling is linear and separable: a crop's up-sampled logits are Uy · L · Uxᵀ with
  fixed interpolation matrices (PyTorch's own bilinear weights, taken from `F.interpolate`). So the
  crops of one row are up-sampled horizontally *and* placed side by side by one matrix product with
  a placement matrix, giving a strip one patch-grid high. Vertically, between two patch rows (16
  pixel rows) each strip is a straight line in the row; the strips covering those rows add up to
  one line, so they are added on patch rows and each pixel row is written once (`_RowGroups`).
  No crop-sized float maps are made; counts are per-axis coverage. The result equals crop-by-crop
  up-sampling and adding up to float rounding (the order of additions differs), which the tests
  check against a literal crop-by-crop loop.

With a learned up-sampler (SimFeatUp JBU, `engine.dense.jbu`), each crop's projected patch features
[D, gh, gw] are first up-sampled to 16× the grid, guided by the crop as the model saw it, and the
cosine logits are taken there (then resized to the crop's pixels as above).

The crop grid is a property of the whole image. To process a large raster in pieces with results
identical to one piece, the caller passes the crops of the global grid that touch a region (in
the piece's pixel coordinates) and the region to fill: see `CropGrid.touching`. Or each crop is
computed once and the pieces pass on its horizontally up-sampled strips (`crop_strips`,
`RowStrips.part` and `include`): see `engine.geo.blocks`.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch import nn

from engine.boxes import Box
from engine.dense.forward import model_dense
from engine.dense.transfer import to_device
from engine.models import LoadedModel

PAD_PLACEMENTS = ("end", "centre")  # where a small crop's padding goes (see the module docstring)
UPSAMPLE_CHUNK = 4  # crops per up-sampler pass (its activations are D × 224² floats per crop)
_MEAN = torch.tensor(OPENAI_DATASET_MEAN).view(3, 1, 1)
_STD = torch.tensor(OPENAI_DATASET_STD).view(3, 1, 1)
log = logging.getLogger(__name__)


def window_starts(length: int, crop: int, stride: int) -> list[int]:
    """Crop origins along one axis; the last one ends exactly at the border."""
    if length <= crop:
        return [0]
    starts = list(range(0, length - crop + 1, stride))
    if starts[-1] + crop < length:
        starts.append(length - crop)
    return starts


@dataclass(frozen=True)
class CropGrid:
    """The crops covering a height × width image."""

    height: int
    width: int
    crop: int
    stride: int

    @property
    def crop_h(self) -> int:
        return min(self.crop, self.height)

    @property
    def crop_w(self) -> int:
        return min(self.crop, self.width)

    def _starts(self) -> tuple[list[int], list[int]]:
        return window_starts(self.height, self.crop, self.stride), window_starts(self.width, self.crop, self.stride)

    def boxes(self) -> list[Box]:
        ys, xs = self._starts()
        return [Box(y, x, self.crop_h, self.crop_w) for y in ys for x in xs]

    def touching(self, region: Box) -> list[Box]:
        """The crops that cover any pixel of `region` (both in whole-image coordinates)."""
        ys, xs = self._starts()
        ys = [y for y in ys if y < region.y + region.h and region.y < y + self.crop_h]
        xs = [x for x in xs if x < region.x + region.w and region.x < x + self.crop_w]
        return [Box(y, x, self.crop_h, self.crop_w) for y in ys for x in xs]

    def starting_in(self, region: Box) -> list[Box]:
        """The crops whose top-left pixel lies in `region` (each crop belongs to exactly one region
        of a partition of the image)."""
        ys, xs = self._starts()
        ys = [y for y in ys if region.y <= y < region.y + region.h]
        xs = [x for x in xs if region.x <= x < region.x + region.w]
        return [Box(y, x, self.crop_h, self.crop_w) for y in ys for x in xs]


ProgressFn = Callable[[int, int], None]  # (crops done, crops total); may raise to cancel


def normalise(pixels: torch.Tensor, valid: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """RGB pixels [3, H, W] — uint8 (0-255) or float (0-1) — → CLIP-normalised float32 [3, H, W] on
    the same device (in `out` when given, e.g. a `Workspace`'s memory). Pixels where `valid` [H, W]
    is False become the CLIP mean colour (0 after normalising), so they weigh nothing in the crops
    around them; pass None when all are valid."""
    device, raw = pixels.device, pixels.dtype == torch.uint8
    scale = _cached(("scale", raw, str(device)), lambda: (1 / (_STD * (255.0 if raw else 1.0))).to(device))
    shift = _cached(("shift", str(device)), lambda: (-_MEAN / _STD).to(device))
    # (p / 255 − mean) / std as p · scale + shift, in place in a float32 copy of the pixels (in `out`:
    # no fresh memory, whose page faults would cost a CPU more than the arithmetic)
    x = pixels.to(torch.float32, copy=True) if out is None else out.copy_(pixels)
    x.mul_(scale).add_(shift)
    if valid is not None:  # × 0 where invalid (5× faster than masked_fill on a CPU)
        x.mul_(valid.to(x.device, torch.bool)[None])
    return x


def _batches(items: list[Box], size: int) -> Iterator[list[Box]]:
    """Consecutive batches of at most `size`, of even length (no small last batch)."""
    if not items:
        return
    count = -(-len(items) // max(1, size))
    size = -(-len(items) // count)
    for start in range(0, len(items), size):
        yield items[start:start + size]


def cut_crops(image: torch.Tensor, boxes: list[Box]) -> torch.Tensor:
    """Same-size crops [B, 3, h, w] of image [3, H, W]: on an accelerator `gathered_crops` (one
    kernel however large the batch), on a CPU `stacked_crops` (4× faster there than the gather)."""
    return stacked_crops(image, boxes) if image.device.type == "cpu" else gathered_crops(image, boxes)


def gathered_crops(image: torch.Tensor, boxes: list[Box]) -> torch.Tensor:
    """The crops gathered in one indexing step from the view of all the image's h × w windows (the
    crop origins travel to the device without waiting for it)."""
    h, w = boxes[0].h, boxes[0].w
    windows = image.unfold(1, h, 1).unfold(2, w, 1)  # [3, H-h+1, W-w+1, h, w], a view
    origins = to_device([[b.y, b.x] for b in boxes], image.device)
    return windows[:, origins[:, 0], origins[:, 1]].transpose(0, 1)


def stacked_crops(image: torch.Tensor, boxes: list[Box]) -> torch.Tensor:
    """The crops sliced out and copied side by side."""
    h, w = boxes[0].h, boxes[0].w
    return torch.stack([image[:, b.y:b.y + h, b.x:b.x + w] for b in boxes])


def pad_offsets(h: int, w: int, patch: int, pad: str = "end") -> tuple[int, int, int, int]:
    """(padded height, padded width, top, left) of an h × w crop padded to a patch multiple: with
    "centre", top = ⌊(ph − h)/2⌋ and left = ⌊(pw − w)/2⌋ (RS-OVSS `compute_padsize`); with "end", 0, 0."""
    if pad not in PAD_PLACEMENTS:
        raise ValueError(f"pad must be one of {PAD_PLACEMENTS} (got {pad!r})")
    ph, pw = -(-h // patch) * patch, -(-w // patch) * patch
    if pad == "end":
        return ph, pw, 0, 0
    return ph, pw, (ph - h) // 2, (pw - w) // 2


def _model_input(crops: torch.Tensor, crop: int, patch: int, pad: str = "end") -> tuple[torch.Tensor, tuple[int, ...]]:
    """Crops [B,3,h,w] → model input [B,3,crop,crop] and where their logits lie once resized back:
    the padded size (ph, pw), with the padding's (top, left) after it when these are not 0."""
    h, w = crops.shape[-2:]
    if h == crop and w == crop:
        return crops, (h, w)
    ph, pw, top, left = pad_offsets(h, w, patch, pad)
    padded = F.pad(crops, (left, pw - w - left, top, ph - h - top))
    resized = F.interpolate(padded, size=(crop, crop), mode="bilinear", align_corners=False)
    return resized, ((ph, pw, top, left) if top or left else (ph, pw))


def _upsampled_logits(upsampler: nn.Module, patches: torch.Tensor, inputs: torch.Tensor,
                      text: torch.Tensor) -> torch.Tensor:
    """Patch features [B, gh, gw, D] up-sampled under the guidance of the model inputs [B, 3, H, W],
    then cosine logits [B, N, 16·gh, 16·gw]."""
    out = []
    for start in range(0, patches.shape[0], UPSAMPLE_CHUNK):
        features = patches[start:start + UPSAMPLE_CHUNK].permute(0, 3, 1, 2).float()
        guidance = inputs[start:start + UPSAMPLE_CHUNK].float()
        out.append(upsampler.cosine(features, guidance, text))
    return torch.cat(out)


def crop_maps(model: LoadedModel, crops: torch.Tensor, text: torch.Tensor, crop: int, global_bias: float = 0.0,
              upsampler: nn.Module | None = None, pad: str = "end") -> tuple[torch.Tensor, tuple[int, ...]]:
    """Cosine logit maps [B, N, a, b] of a batch of same-size normalised crops, at the resolution the
    network (or the up-sampler) gives them, and the padded crop size (ph, pw) they are up-sampled to
    (then cut to the crops' own size, from the top-left corner; with `pad="centre"` and padding
    before the crop, (ph, pw, top, left): cut from (top, left)).

    With `global_bias` λ, each crop's logits less λ × the cosine logits of its image-level embedding:
    the CLS row of the same dense pass (`dense_features(dense_cls=True)`), as SegEarth-OV does."""
    inputs, padded = _model_input(crops, crop, model.patch_size, pad)
    inputs = inputs.to(model.device, model.dtype)
    with torch.inference_mode():
        if global_bias:
            patches, cls = model_dense(model, inputs, dense_cls=True)
        else:
            patches = model_dense(model, inputs)
        text = text.to(patches.device)
        if upsampler is not None:
            maps = _upsampled_logits(upsampler, patches, inputs, text)
        else:
            maps = torch.einsum("bhwd,nd->bnhw", F.normalize(patches.float(), dim=-1), text)
        if global_bias:
            cls_logits = F.normalize(cls.float(), dim=-1) @ text.T
            maps = maps - global_bias * cls_logits[:, :, None, None]
    return maps, padded


_cache: OrderedDict = OrderedDict()  # small device tensors reused block after block
_cache_lock = threading.RLock()  # a maker may use the cache itself


def _cached(key, make: Callable[[], torch.Tensor]):
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        value = _cache[key] = make()
        if len(_cache) > 64:
            _cache.popitem(last=False)
        return value


def _interpolation(src: int, dst: int, keep: int, device, skip: int = 0) -> torch.Tensor:
    """[keep, src]: rows skip..skip+keep-1 of bilinear (align_corners=False) resizing src → dst, with
    exactly the weights `F.interpolate` uses."""
    def make():
        eye = torch.eye(src, dtype=torch.float32)[None]
        weights = F.interpolate(eye, size=dst, mode="linear", align_corners=False)[0].T
        return weights[skip:skip + keep].contiguous().to(device)

    return _cached(("interp", src, dst, keep, skip, str(device)), make)


def _strip_shape(shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """(patch rows a, padded crop height ph, crop height h, padding above the crop top) of a
    `RowStrips.shape`, which leaves out a top of 0."""
    a, ph, h, *rest = shape
    return a, ph, h, (rest[0] if rest else 0)


def _row_placement(xs: tuple[int, ...], b: int, pw: int, w: int, width: int, device,
                   left: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """For crops starting at columns `xs` (region coordinates, may stick out of [0, width)):
    P [len(xs)·b, width] with P[k·b + j, x] = Ux[left + x − xs[k], j] (Ux: b → pw columns, the
    crop's own w read from column `left` of the padded crop), so that a row of logit maps laid side
    by side [.., len(xs)·b] @ P is their horizontally up-sampled sum; and the coverage [width].
    Built on the device by scattering (nothing waits for the device)."""
    def make():
        ux = _interpolation(b, pw, w, device, left)  # [w, b]
        cols = to_device(list(xs), device)[:, None] + torch.arange(w, device=device)[None]  # [K, w]
        inside = (cols >= 0) & (cols < width)
        cols = cols.clamp(0, width - 1)
        weights = ux.T[None] * inside[:, None, :]  # [K, b, w]; 0 outside the region (added harmlessly)
        placement = torch.zeros(len(xs), b, width, device=device)
        placement.scatter_add_(2, cols[:, None, :].expand(-1, b, -1), weights)
        coverage = torch.zeros(width, device=device).scatter_add_(0, cols.flatten(), inside.flatten().float())
        return placement.reshape(len(xs) * b, width), coverage

    return _cached(("row", xs, b, pw, w, width, left, str(device)), make)


class RowStrips:
    """The logits of each crop row, up-sampled horizontally and summed side by side into a strip
    [N, a, region.w] (one patch-grid high), with its coverage [region.w], as batches arrive;
    `write_mean_to` then up-samples the strips vertically once and writes their mean (`write_to`:
    their sum and coverage, which the tests compare with one pass exactly).
    Strips are keyed by their crop row's top pixel row, in the region's coordinates. A region's
    strips can be cut into parts (`part`) and parts added into another region's strips (`include`):
    that is how blocks of a large raster pass on what their crops contribute to their neighbours,
    1/16 of the size of the up-sampled logits."""

    def __init__(self, region: Box, shape: tuple[int, ...] | None = None):
        self.region = region
        self.rows: dict[int, list[torch.Tensor]] = {}  # crop row top y → [strip, coverage]
        # (a, padded crop height, crop height[, padding above the crop when not 0]), known once a
        # batch has arrived
        self.shape = shape

    def add(self, maps: torch.Tensor, padded: tuple[int, ...], boxes: list[Box]) -> None:
        """Logit maps [B, N, a, b] of same-size `boxes`, up-sampled to `padded` (ph, pw) and cut to the
        box size from its top-left corner, or from (top, left) when `padded` is (ph, pw, top, left)."""
        _, n, a, b = maps.shape
        h, w = boxes[0].h, boxes[0].w
        ph, pw, top, left = (*padded, 0, 0)[:4]
        self.shape = (a, ph, h, top) if top else (a, ph, h)
        region = self.region
        for start, stop in _row_runs(boxes):
            y = boxes[start].y
            if y >= region.y + region.h or y + h <= region.y:
                continue
            xs = tuple(box.x - region.x for box in boxes[start:stop])
            # only the columns these crops cover (a batch holds a few crops of a row, not the whole row)
            lo, hi = max(0, min(xs)), min(region.w, max(xs) + w)
            if hi <= lo:
                continue
            placement, coverage = _row_placement(tuple(x - lo for x in xs), b, pw, w, hi - lo, maps.device, left)
            strip, covered = self._row(y, n, a, maps)
            strip[..., lo:hi] += maps[start:stop].permute(1, 2, 0, 3).reshape(n, a, len(xs) * b) @ placement
            covered[lo:hi] += coverage

    def _row(self, y: int, n: int, a: int, like: torch.Tensor) -> list[torch.Tensor]:
        if y not in self.rows:
            self.rows[y] = [like.new_zeros(n, a, self.region.w, dtype=torch.float32),
                            like.new_zeros(self.region.w, dtype=torch.float32)]
        return self.rows[y]

    def part(self, box: Box, copy: bool = False) -> "RowStrips":
        """The strips over `box` (inside the region, same coordinates): the crop rows reaching into its
        rows, cut to its columns. Views of these strips, or copies with `copy`."""
        out = RowStrips(box, self.shape)
        if self.shape is None:
            return out
        h = self.shape[2]
        cols = slice(box.x - self.region.x, box.x - self.region.x + box.w)
        for y, (strip, covered) in self.rows.items():
            if y < box.y + box.h and y + h > box.y:
                out.rows[y] = [t.clone() if copy else t for t in (strip[..., cols], covered[cols])]
        return out

    def include(self, part: "RowStrips") -> None:
        """Add a part's strips (its region inside this one, same coordinates) into these. A strip of
        a row these do not hold yet that spans their whole width is taken over, not copied: the part
        is handed over (its giver must not use it again)."""
        if part.shape is None:
            return
        if self.shape is not None and self.shape != part.shape:
            raise ValueError("strips of different crop shapes cannot be added")
        self.shape = part.shape
        cols = slice(part.region.x - self.region.x, part.region.x - self.region.x + part.region.w)
        whole_width = (part.region.x, part.region.w) == (self.region.x, self.region.w)
        for y, (strip, covered) in part.rows.items():
            if whole_width and y not in self.rows:
                self.rows[y] = [strip, covered]
                continue
            mine, mine_covered = self._row(y, strip.shape[0], strip.shape[1], strip)
            mine[..., cols] += strip
            mine_covered[cols] += covered

    def shifted(self, dy: int, dx: int) -> "RowStrips":
        """The same strips (shared) in coordinates shifted by (dy, dx)."""
        out = RowStrips(self.region.shifted(dy, dx), self.shape)
        out.rows = {y + dy: pair for y, pair in self.rows.items()}
        return out

    def to(self, device) -> "RowStrips":
        out = RowStrips(self.region, self.shape)
        out.rows = {y: [t.to(device) for t in pair] for y, pair in self.rows.items()}
        return out

    def write_to(self, total: torch.Tensor, count: torch.Tensor) -> None:
        """Up-sample the strips vertically into total [N, region.h, region.w] and their coverage into
        count [1, region.h, region.w], writing every element (neither needs zeroing first)."""
        groups = self._row_groups(total.shape[0], total.device)
        groups.write(total)
        for rows, run in groups.runs():
            count[0, rows].view(run.stop - run.start, -1, count.shape[-1]).copy_(groups.coverage[run, None])

    def write_mean_to(self, out: torch.Tensor) -> torch.Tensor:
        """Up-sample the strips vertically and divide by their coverage: the mean logits, into out
        [N, region.h, region.w] (every element written; NaN where no crop reaches). Returns the
        coverage of each row group [G, region.w] (0 where no crop reaches)."""
        groups = self._row_groups(out.shape[0], out.device)
        groups.first.div_(groups.coverage)
        groups.slope.div_(groups.coverage)
        groups.write(out)
        return groups.coverage

    def _row_groups(self, n: int, device) -> "_RowGroups":
        """The region's rows cut into groups over which every strip reads the same two patch rows
        (or one, at a crop's clamped border rows): there a strip's bilinear up-sampling is a straight
        line in the row, first value + row offset × slope, so the strips covering a group add up to
        one line. Adding them on group rows first (a patch row in the strip is 16 pixel rows) and
        drawing the lines in one pass writes each pixel once, with 2 operations instead of a product
        over every patch row of the covering strips."""
        region = self.region
        a, ph, h, top = _strip_shape(self.shape or (1, 1, 1))
        tops = sorted(y for y in self.rows if region.y - h < y < region.y + region.h)  # the strips reaching it
        if not tops:
            return _RowGroups([0, region.h], torch.zeros(n, 1, region.w, device=device),
                              torch.zeros(n, 1, region.w, device=device), torch.zeros(1, region.w, device=device))
        low, high, weight, changes = _vertical_plan(a, ph, h, top)
        slope = a / ph  # the upper row's weight grows by this from one pixel row to the next
        starts = [y - region.y for y in tops]
        edges = sorted({0, region.h} | {s + t for s in starts for t in (0, h, *changes) if 0 < s + t < region.h})
        index = {e: g for g, e in enumerate(edges)}
        spans, lows, highs, firsts, slopes = [], [], [], [], []
        for s in starts:
            g0, g1 = index[max(s, 0)], index[min(s + h, region.h)]
            spans.append((g0, g1, len(lows)))
            for g in range(g0, g1):
                t = edges[g] - s
                lows.append(low[t])
                highs.append(high[t])
                firsts.append(weight[t])
                slopes.append(slope if high[t] != low[t] else 0.0)
        lows_d, highs_d = to_device(lows, device), to_device(highs, device)
        firsts_d = to_device(firsts, device, torch.float32)[:, None]
        slopes_d = to_device(slopes, device, torch.float32)[:, None]
        n_groups = len(edges) - 1
        first = torch.zeros(n, n_groups, region.w, device=device)
        rise = torch.zeros(n, n_groups, region.w, device=device)
        coverage = torch.zeros(n_groups, region.w, device=device)
        for (g0, g1, m0), y in zip(spans, tops):  # strip by strip, in order: the same sums everywhere
            m = slice(m0, m0 + g1 - g0)
            strip, covered = self.rows[y]
            lower = strip.index_select(1, lows_d[m])
            step = strip.index_select(1, highs_d[m]).sub_(lower)
            first[:, g0:g1].add_(lower).addcmul_(step, firsts_d[m])
            rise[:, g0:g1].addcmul_(step, slopes_d[m])
            coverage[g0:g1] += covered
        return _RowGroups(edges, first, rise, coverage)


def _row_runs(boxes: list[Box]) -> Iterator[tuple[int, int]]:
    """(start, stop) of each run of consecutive boxes on one row (a crop grid lists rows in order)."""
    start = 0
    for k in range(1, len(boxes) + 1):
        if k == len(boxes) or boxes[k].y != boxes[start].y:
            yield start, k
            start = k


def _vertical_plan(a: int, ph: int, h: int, top: int = 0) -> tuple[list[int], list[int], list[float], list[int]]:
    """For each of the h rows from row `top` of the ph rows bilinear resizing gives a rows: the lower
    and upper source row it reads, the upper one's weight (0 where it reads one row: the clamped
    border rows), with exactly `F.interpolate`'s weights; and the rows where the pair read changes."""
    def make():
        uy = _interpolation(a, ph, h, "cpu", top)
        cols = torch.arange(a)
        nonzero = uy != 0
        low = torch.where(nonzero, cols, a).amin(dim=1)
        high = torch.where(nonzero, cols, -1).amax(dim=1)
        weight = torch.where(high != low, uy[torch.arange(h), high], 0.0)
        low, high = low.tolist(), high.tolist()
        changes = [t for t in range(1, h) if (low[t], high[t]) != (low[t - 1], high[t - 1])]
        return low, high, weight.tolist(), changes

    return _cached(("vplan", a, ph, h, top), make)


@dataclass
class _RowGroups:
    """A region's rows in groups (`RowStrips._row_groups`): group g is rows edges[g]..edges[g+1],
    where the up-sampled strips add up to first[:, g] + (row − edges[g]) · slope[:, g] ([N, G, W]),
    covered by `coverage` [G, W] crops."""

    edges: list[int]
    first: torch.Tensor
    slope: torch.Tensor
    coverage: torch.Tensor

    def runs(self) -> Iterator[tuple[slice, slice]]:
        """(rows, groups) of each run of consecutive groups of one height."""
        heights = [b - a for a, b in zip(self.edges, self.edges[1:])]
        g = 0
        while g < len(heights):
            end = g
            while end < len(heights) and heights[end] == heights[g]:
                end += 1
            yield slice(self.edges[g], self.edges[end]), slice(g, end)
            g = end

    def write(self, out: torch.Tensor) -> None:
        """Draw the lines into out [N, H, W], a run of same-height groups at a time."""
        n, width = out.shape[0], out.shape[-1]
        for rows, run in self.runs():
            height = (rows.stop - rows.start) // (run.stop - run.start)
            offsets = _cached(("offsets", height, str(out.device)),
                              lambda: torch.arange(height, dtype=torch.float32, device=out.device)[:, None])
            torch.addcmul(self.first[:, run, None], self.slope[:, run, None], offsets,
                          out=out[:, rows].view(n, run.stop - run.start, height, width))


class Workspace:
    """float32 memory for one block after another (its normalised pixels, its logit sums). A fresh
    tensor of that size (tens of MB) costs a CPU ~20 ms of page faults each time (the C library
    maps large allocations afresh and gives them back when freed); this one is allocated once and
    reused. A GPU's caching allocator reuses its memory anyway. Whoever holds a tensor `empty`
    returned must be done with it before the next call."""

    def __init__(self):
        self._flat: torch.Tensor | None = None

    def empty(self, shape: tuple[int, ...], device: "torch.device | str") -> torch.Tensor:
        numel, device = math.prod(shape), torch.device(device)
        if self._flat is None or self._flat.device != device or self._flat.numel() < numel:
            self._flat = None  # the old memory goes before the new is taken
            self._flat = torch.empty(numel, dtype=torch.float32, device=device)
        return self._flat[:numel].view(shape)


_batch_limits: dict[str, int] = {}  # per device: the batch that fitted after running out of memory


def crop_strips(model: LoadedModel, image: torch.Tensor, text: torch.Tensor, crop: int, boxes: list[Box],
                region: Box, batch_size: int = 16, global_bias: float = 0.0, progress: ProgressFn | None = None,
                upsampler: nn.Module | None = None, pad: str = "end") -> RowStrips:
    """The crops' logits as `RowStrips` of `region` (float32, on the model's device).

    `image` is normalised [3, H, W] (see `normalise`; moved to the model's device if elsewhere);
    `boxes` (all of one size) and `region` are in its pixel coordinates; each box's logits count
    where it overlaps the region; `pad` places a small crop's padding (see the module docstring). On a
    GPU that runs out of memory the batch is halved (and remembered).
    """
    image = image.to(model.device)
    rows = RowStrips(region)
    size = min(batch_size, _batch_limits.get(str(model.device), batch_size))
    done, pending = 0, list(boxes)
    while pending:
        batch = next(_batches(pending, size))
        try:
            maps, padded = crop_maps(model, cut_crops(image, batch), text, crop, global_bias, upsampler, pad)
        except torch.OutOfMemoryError:
            if size == 1:
                raise
            size = max(1, size // 2)
            _batch_limits[str(model.device)] = size
            torch.cuda.empty_cache()
            log.warning("out of device memory: batch lowered to %d crops", size)
            continue
        rows.add(maps, padded, batch)
        pending = pending[len(batch):]
        done += len(batch)
        if progress is not None:
            progress(done, len(boxes))
    return rows


def mean_strips(rows: RowStrips, n_names: int, device, workspace: "Workspace | None" = None,
                check_cover: bool = False) -> torch.Tensor:
    """Mean crop logits [N, region.h, region.w] (float32, on `device`) of strips; with a `workspace`
    made in its memory (valid until its next use). With `check_cover`, a ValueError when a region
    pixel is covered by no crop (which waits for an accelerator)."""
    region = rows.region
    shape = (n_names, region.h, region.w)
    mean = (workspace.empty(shape, device) if workspace is not None
            else torch.empty(shape, dtype=torch.float32, device=device))
    coverage = rows.write_mean_to(mean)
    if check_cover and bool((coverage == 0).any()):
        raise ValueError("some region pixels are covered by no crop")
    return mean


def sliding_logits(model: LoadedModel, image: torch.Tensor, text: torch.Tensor, crop: int, stride: int,
                   batch_size: int = 16, global_bias: float = 0.0, boxes: list[Box] | None = None,
                   region: Box | None = None, progress: ProgressFn | None = None,
                   upsampler: nn.Module | None = None, pad: str = "end") -> torch.Tensor:
    """Mean cosine logits [N, region.h, region.w] (float32, on the model's device) of a normalised
    image [3,H,W].

    `boxes` (default: the image's own crops touching the region) and `region` (default: the whole
    image) are in the image's pixel coordinates; every region pixel must be covered by a box. `pad`:
    where a crop smaller than `crop` is padded ("end": bottom/right; "centre": both sides, as published).
    """
    _, height, width = image.shape
    region = region or Box(0, 0, height, width)
    if boxes is None:
        boxes = CropGrid(height, width, crop, stride).touching(region)
    rows = crop_strips(model, image, text, crop, boxes, region, batch_size, global_bias, progress, upsampler, pad)
    try:
        return mean_strips(rows, text.shape[0], model.device, check_cover=True)
    except ValueError as exc:
        raise ValueError(f"sliding_logits: {exc}") from None
