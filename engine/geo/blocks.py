"""Running the global crop grid over a large working raster block by block, each crop exactly once.

The working raster is cut into blocks (a partition, row-major). Each crop of the global grid
belongs to the block holding its top-left pixel; it is computed once, with the pixels of that
block extended by one crop to the right and bottom, and its logits count in every block it
covers. Since a block is at least one crop wide, a crop reaches at most the next block to the
right, below and diagonally. So when block (i, j) has been computed, every crop covering it has
been, and it is finished: its averaged logits are yielded and its memory freed.

What a block passes on is its crops' logits up-sampled horizontally only, one strip a patch grid
high per crop row (`engine.dense.sliding.RowStrips`), cut to each block they reach; a block adds
the strips it received to its own and up-samples them vertically once, over its own pixels only.
The strips are 1/16 of the size of up-sampled logits (a 224 px crop row, 14 patch rows), so what
waits for the next block row is small.

Memory: one extended block plus the strips waiting for the next block row — bounded by the block
size and the raster width, never its area. The result equals one pass over the whole raster (same
crops, same sums).
"""

from __future__ import annotations

import math
import threading
from contextlib import closing
from typing import Callable, Iterator

import torch

from engine import config
from engine.boxes import Box
from engine.dense import Segmenter
from engine.dense.sliding import CropGrid, RowStrips, Workspace, crop_strips, mean_strips, normalise
from engine.dense.transfer import pinned, upload
from engine.errors import Cancelled
from engine.geo.background import WaitClock, prefetched
from engine.geo.rasters import gdal_env
from engine.geo.validity import BlockValidity

CropProgressFn = Callable[[int], None]  # crops just finished


def block_core(height: int, width: int, block: int, i: int, j: int) -> Box | None:
    """Block (i, j) of the partition of a height × width grid into block × block cores (None outside)."""
    y, x = i * block, j * block
    if i < 0 or j < 0 or y >= height or x >= width:
        return None
    return Box(y, x, min(block, height - y), min(block, width - x))


def block_boxes(height: int, width: int, block: int) -> list[list[Box]]:
    """The whole partition, as rows of boxes."""
    return [[block_core(height, width, block, i, j) for j in range(-(-width // block))]
            for i in range(-(-height // block))]


def _overlap(a: Box, b: Box) -> Box | None:
    y0, x0 = max(a.y, b.y), max(a.x, b.x)
    y1, x1 = min(a.y + a.h, b.y + b.h), min(a.x + a.w, b.x + b.w)
    return Box(y0, x0, y1 - y0, x1 - x0) if y1 > y0 and x1 > x0 else None


CPU_BLOCK = 1024  # working-grid block side on a CPU
GPU_BLOCK = 2048  # on a GPU: a few hundred crops a block (H100: 0.73 of the model's rate, 0.57 at 1024)


SUMS_BYTES = 2**30  # a block's logit sums (float32, a plane per class name) are held at most this big


def default_block(device: torch.device) -> int:
    """The block side used when a run names none."""
    return CPU_BLOCK if device.type == "cpu" else GPU_BLOCK


def working_block(segmenter: Segmenter, block: int | None) -> int:
    """The block side a run uses: `block` (None: `default_block` of the model's device), at least one crop,
    and no larger than keeps the block's logit sums (a float32 plane per class name) within `SUMS_BYTES`.
    Any side gives the same results, so many classes make blocks smaller rather than exhaust the memory
    (a block of 8192 px holds 268 MB a name: 254 names, 68 GB)."""
    names = len(segmenter.prompts.names)
    fitting = int(math.sqrt(SUMS_BYTES / (4 * names))) // 256 * 256
    return max(min(block or default_block(segmenter.model.device), fitting), segmenter.crop)


def count_crops(segmenter: Segmenter, height: int, width: int) -> int:
    return len(CropGrid(height, width, segmenter.crop, segmenter.stride).boxes())


Part = tuple[tuple[int, int], RowStrips]  # (target block, the strips that fall on it, global coordinates)


def owned_crops(segmenter: Segmenter, height: int, width: int, block: int) -> list[list[list[Box]]]:
    """For each block (rows of the partition), the crops of the global grid that it owns."""
    grid = CropGrid(height, width, segmenter.crop, segmenter.stride)
    return [[grid.starting_in(core) for core in row] for row in block_boxes(height, width, max(block, segmenter.crop))]


def block_extent(core: Box, owned: list[Box]) -> Box:
    """The working-grid rectangle a block's owned crops need: the block extended by up to one crop."""
    return Box(core.y, core.x, max(b.y + b.h for b in owned + [core]) - core.y,
               max(b.x + b.w for b in owned + [core]) - core.x)


def block_contributions(segmenter: Segmenter, height: int, width: int, block: int, i: int, j: int,
                        image: torch.Tensor, on_crops: CropProgressFn | None = None) -> list[Part]:
    """Run the crops block (i, j) owns on its extended image (see `block_extent`) and return their
    logits as crop-row strips (`RowStrips`, horizontally up-sampled, one patch grid high) cut into
    the parts that fall on block (i, j) and its right, lower and diagonal neighbours, in working-grid
    coordinates. Pure: the same inputs give the same parts in any process. Block (i, j)'s own part
    holds views of the strips, the neighbours' parts copies (no view keeps all the strips alive)."""
    block = max(block, segmenter.crop)
    core = block_core(height, width, block, i, j)
    owned = CropGrid(height, width, segmenter.crop, segmenter.stride).starting_in(core)
    if not owned:
        return []
    extent = block_extent(core, owned)
    local = [b.shifted(-extent.y, -extent.x) for b in owned]
    strips = crop_strips(
        segmenter.model, image, segmenter.text, segmenter.crop, local, Box(0, 0, extent.h, extent.w),
        segmenter.batch_size, segmenter.options.global_bias, progress=_delta_reporter(on_crops),
        upsampler=segmenter.upsampler).shifted(extent.y, extent.x)  # into working-grid coordinates
    parts: list[Part] = []
    for ti, tj in ((i, j), (i, j + 1), (i + 1, j), (i + 1, j + 1)):
        target = block_core(height, width, block, ti, tj)
        part = None if target is None else _overlap(extent, target)
        if part is not None:
            parts.append(((ti, tj), strips.part(part, copy=(ti, tj) != (i, j))))
    return parts


def sources_of(i: int, j: int) -> list[tuple[int, int]]:
    """The blocks whose crops can reach block (i, j), in the order they are computed (row-major)."""
    return [(si, sj) for si, sj in ((i - 1, j - 1), (i - 1, j), (i, j - 1), (i, j)) if si >= 0 and sj >= 0]


def assemble_block(core: Box, parts: list[RowStrips], n_names: int, device,
                   workspace: Workspace | None = None) -> torch.Tensor:
    """Mean logits [N, h, w] of a block from the strip parts its own and its neighbours' crops gave it,
    added in the order given (callers give them in `sources_of` order, so every way of computing a
    raster — `segment`, `segment-batch` in-process or on Ray — adds the same numbers in the same order),
    then up-sampled vertically once. With a `workspace`, the result lies in its memory."""
    strips = RowStrips(core)
    for part in parts:
        strips.include(part.to(device))
    return mean_strips(strips, n_names, device, workspace)


def _delta_reporter(on_crops: CropProgressFn | None):
    """Turn (done, total) reports of one block into 'n more crops finished' calls."""
    last = 0

    def report(done: int, _total: int) -> None:
        nonlocal last
        if on_crops is not None:
            on_crops(done - last)
        last = done

    return report


def raster_blocks(segmenter: Segmenter, source, block: int | None,
                  progress: Callable[[int, int], None] | None = None, cancel: threading.Event | None = None,
                  read_wait: WaitClock | None = None) -> Iterator[tuple[Box, torch.Tensor, BlockValidity]]:
    """(core, mean logits [N, h, w] on the model's device, its validity: `RasterSource.block_validity`)
    for each block of a RasterSource's working grid, in row-major order, reporting (crops done, crops
    total) and stopping with `Cancelled` within one batch of a cancel. `block`: as `working_block`.

    Beside a GPU, background threads (`config.read_threads`) read (decode, stretch, resample) the next
    blocks while the current one is computed (on a CPU each block is read when it is needed); each
    block's pixels go to the device once, as read (uint8 or the stretched floats), and are normalised
    there. `read_wait` adds up the time spent waiting for them.
    A block's logits are valid until the next block is asked for (they are summed in one `Workspace`)."""
    grid = source.grid
    height, width = grid.height, grid.width
    total = count_crops(segmenter, height, width)
    block = working_block(segmenter, block)
    owned = owned_crops(segmenter, height, width, block)
    plan = [(i, j, core, block_extent(core, owned[i][j]) if owned[i][j] else None)
            for i, row in enumerate(block_boxes(height, width, block)) for j, core in enumerate(row)]
    done = 0

    def reader(extent: Box | None, core: Box):
        def read():
            with gdal_env():  # GDAL's settings of the thread that started the run are not this thread's
                pixels, within = None, None
                if extent is not None:
                    rgb, ok = source.read_pixels(extent)
                    pixels, within = (pinned(rgb), None if ok.all() else pinned(ok)), (extent, ok)
                return pixels, source.block_validity(core, within)
        return read

    def on_crops(n: int) -> None:
        nonlocal done
        done += n
        if cancel is not None and cancel.is_set():
            raise Cancelled("cancelled")
        if progress is not None:
            progress(done, total)

    device = segmenter.model.device
    workspace, pixel_space = Workspace(), Workspace()  # the block's logit sums; its normalised pixels
    pending: dict[tuple[int, int], list[RowStrips]] = {}  # parts for blocks not computed yet, in sources order
    reads = prefetched((reader(extent, core) for _, _, core, extent in plan), clock=read_wait,
                       workers=config.read_threads(device.type))
    with closing(reads):
        for (i, j, core, _extent), (pixels, valid) in zip(plan, reads):
            if pixels is not None:
                rgb, ok = pixels
                image = normalise(upload(rgb, device), None if ok is None else upload(ok, device),
                                  out=pixel_space.empty((3, *rgb.shape[-2:]), device))
                for target, part in block_contributions(segmenter, height, width, block, i, j, image, on_crops):
                    pending.setdefault(target, []).append(part)
                del image
            yield core, assemble_block(core, pending.pop((i, j), []), len(segmenter.prompts.names), device,
                                       workspace), valid
