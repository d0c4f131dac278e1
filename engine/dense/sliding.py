"""Sliding-window dense logits: crops of the model's input size, averaged where they overlap.

Crops are `crop` px with stride `stride` (224/112 for ViT-B); the last crop of a row or column is
shifted inward to end at the border. Each crop's per-patch cosine logits (patch embedding · name
embedding) are bilinearly up-sampled to the crop's pixels and summed; the sum is divided by the
number of crops covering each pixel. A crop smaller than `crop` (an image side under `crop`) is
padded at its bottom/right to a patch multiple, resized to crop × crop, and its logits are resized
back to the padded size, then the padding is cut off.

With a learned up-sampler (SimFeatUp JBU, `engine.dense.jbu`), each crop's projected patch features
[D, gh, gw] are first up-sampled to 16× the grid, guided by the crop as the model saw it, and the
cosine logits are taken there (then resized to the crop's pixels as above).

The crop grid is a property of the whole image. To process a large raster in pieces with results
identical to one piece, the caller passes the crops of the global grid that touch a region (in
the piece's pixel coordinates) and the region to fill: see `CropGrid.touching`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from engine.boxes import Box
from engine.dense.forward import dense_features
from engine.models import LoadedModel

UPSAMPLE_CHUNK = 4  # crops per up-sampler pass (its activations are D × 224² floats per crop)


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


def _batches(items: list[Box], size: int) -> Iterator[list[Box]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _model_input(crops: torch.Tensor, crop: int, patch: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Crops [B,3,h,w] → model input [B,3,crop,crop] and the padded size whose logits we keep."""
    h, w = crops.shape[-2:]
    if h == crop and w == crop:
        return crops, (h, w)
    ph, pw = -(-h // patch) * patch, -(-w // patch) * patch
    padded = F.pad(crops, (0, pw - w, 0, ph - h))
    resized = F.interpolate(padded, size=(crop, crop), mode="bilinear", align_corners=False)
    return resized, (ph, pw)


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


def crop_logits(model: LoadedModel, crops: torch.Tensor, text: torch.Tensor, crop: int,
                global_bias: float = 0.0, upsampler: nn.Module | None = None) -> torch.Tensor:
    """Cosine logits [B, N, h, w] at pixel resolution for a batch of same-size normalised crops."""
    h, w = crops.shape[-2:]
    inputs, (ph, pw) = _model_input(crops, crop, model.patch_size)
    inputs = inputs.to(model.device, model.dtype)
    with torch.inference_mode():
        if global_bias:
            patches, cls = dense_features(model.clip.visual, inputs, with_cls=True)
        else:
            patches = dense_features(model.clip.visual, inputs)
        text = text.to(patches.device)
        if upsampler is not None:
            logits = _upsampled_logits(upsampler, patches, inputs, text)
        else:
            patches = F.normalize(patches.float(), dim=-1)
            logits = torch.einsum("bhwd,nd->bnhw", patches, text)
        if global_bias:
            cls_logits = F.normalize(cls.float(), dim=-1) @ text.T
            logits = logits - global_bias * cls_logits[:, :, None, None]
        logits = F.interpolate(logits, size=(ph, pw), mode="bilinear", align_corners=False)
    return logits[:, :, :h, :w]


def accumulate_crops(model: LoadedModel, image: torch.Tensor, text: torch.Tensor, crop: int,
                     boxes: list[Box], region: Box, batch_size: int = 16, global_bias: float = 0.0,
                     progress: ProgressFn | None = None,
                     upsampler: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of crop logits [N, region.h, region.w] and crop count [1, region.h, region.w] (float32).

    `boxes` and `region` are in the pixel coordinates of `image` [3, H, W]; each box's logits are
    added where it overlaps the region.
    """
    n = text.shape[0]
    total = torch.zeros(n, region.h, region.w, dtype=torch.float32, device=model.device)
    count = torch.zeros(1, region.h, region.w, dtype=torch.float32, device=model.device)
    done = 0
    for batch in _batches(boxes, batch_size):
        crops = torch.stack([image[:, b.y:b.y + b.h, b.x:b.x + b.w] for b in batch])
        logits = crop_logits(model, crops, text, crop, global_bias, upsampler)
        for b, lg in zip(batch, logits):
            y0, y1 = max(b.y, region.y), min(b.y + b.h, region.y + region.h)
            x0, x1 = max(b.x, region.x), min(b.x + b.w, region.x + region.w)
            if y0 >= y1 or x0 >= x1:
                continue
            total[:, y0 - region.y:y1 - region.y, x0 - region.x:x1 - region.x] += \
                lg[:, y0 - b.y:y1 - b.y, x0 - b.x:x1 - b.x]
            count[:, y0 - region.y:y1 - region.y, x0 - region.x:x1 - region.x] += 1
        done += len(batch)
        if progress is not None:
            progress(done, len(boxes))
    return total, count


def sliding_logits(model: LoadedModel, image: torch.Tensor, text: torch.Tensor, crop: int, stride: int,
                   batch_size: int = 16, global_bias: float = 0.0, boxes: list[Box] | None = None,
                   region: Box | None = None, progress: ProgressFn | None = None,
                   upsampler: nn.Module | None = None) -> torch.Tensor:
    """Mean cosine logits [N, region.h, region.w] (float32, on the model's device) of image [3,H,W].

    `boxes` (default: the image's own crops touching the region) and `region` (default: the whole
    image) are in the image's pixel coordinates; every region pixel must be covered by a box.
    """
    _, height, width = image.shape
    region = region or Box(0, 0, height, width)
    if boxes is None:
        boxes = CropGrid(height, width, crop, stride).touching(region)
    total, count = accumulate_crops(model, image, text, crop, boxes, region, batch_size, global_bias, progress,
                                    upsampler)
    if bool((count == 0).any()):
        raise ValueError("sliding_logits: some region pixels are covered by no crop")
    return total / count
