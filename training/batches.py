"""Training samples → model-ready batches, for both stages.

Images are resized (bicubic) to the model's square input and normalised with the engine's
`prepare_image` (CLIP mean/std, RGB), so training sees pixels exactly as inference does. Between the
two, `Augment` (when the settings ask for it; the published stage 2 does) applies
ColorJitter(brightness, contrast, saturation, hue) with probability `color_jitter_p`, then
RandomGrayscale(`grayscale_p`), to the global image and to every object crop, each drawn on its own.

Stage 1 (RS5M-style shards): the global image, its caption, and `max_boxes` random local crops
(RandomResizedCrop boxes, scale 0.3–0.7, ratio 3/4–4/3) — each crop cut from the original image and resized on its own
(the teacher's input), its box expressed in the resized global image's pixels (the student's RoI).

Stage 2 (MGRS): the global image, its long caption, and up to `max_boxes` objects, each cropped from
the original image, with its category text and id. Ranks must exchange fixed-size tensors, so objects
are padded to batch × max_boxes slots with a `valid` mask; an object described by its own caption
is left out of the region loss (label −1, the published rule) or, with `own_caption=keep`, gets a
unique negative id (its only positive is itself).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from engine.dense import prepare_image
from training.data.readers import local_crop_boxes


class Augment:
    """ColorJitter with probability p, then RandomGrayscale — on a PIL image (picklable)."""

    def __init__(self, jitter, jitter_p: float, grayscale_p: float):
        from torchvision.transforms import ColorJitter, Grayscale

        self.jitter = ColorJitter(*jitter) if jitter_p > 0 and any(jitter) else None
        self.jitter_p, self.grayscale_p = jitter_p, grayscale_p
        self.gray = Grayscale(num_output_channels=3)

    def __call__(self, image: Image.Image) -> Image.Image:
        if self.jitter is not None and float(torch.rand(())) < self.jitter_p:
            image = self.jitter(image)
        if self.grayscale_p > 0 and float(torch.rand(())) < self.grayscale_p:
            image = self.gray(image)
        return image


def augmentation(cfg) -> Augment | None:
    """The stage's augmentation from the settings (None: resize only)."""
    if cfg.color_jitter_p <= 0 and cfg.grayscale_p <= 0:
        return None
    return Augment(tuple(cfg.color_jitter), cfg.color_jitter_p, cfg.grayscale_p)


class ImageTransform:
    """PIL image → (augmented) normalised float tensor [3, size, size]."""

    def __init__(self, size: int, augment: Augment | None = None):
        self.size, self.augment = size, augment

    def __call__(self, image: Image.Image) -> torch.Tensor:
        resized = image.convert("RGB").resize((self.size, self.size), Image.BICUBIC)
        if self.augment is not None:
            resized = self.augment(resized)
        return prepare_image(np.array(resized))


class Stage1Sample:
    """(PIL image, caption) → dict with the global view, local crops and their boxes (picklable, so it
    runs in data-loading workers)."""

    def __init__(self, size: int, max_boxes: int, scale, ratio, augment: Augment | None = None):
        self.transform = ImageTransform(size, augment)
        self.size, self.max_boxes, self.scale, self.ratio = size, max_boxes, tuple(scale), tuple(ratio)

    def __call__(self, pair) -> dict:
        image, caption = pair
        image = image.convert("RGB")
        width, height = image.size
        boxes = local_crop_boxes(width, height, self.max_boxes, self.scale, self.ratio)
        crops = torch.stack([self.transform(image.crop(tuple(int(v) for v in b.tolist()))) for b in boxes])
        scaled = boxes * torch.tensor([self.size / width, self.size / height] * 2)
        return {"image": self.transform(image), "caption": caption, "boxes": scaled, "crops": crops}


class Stage2Samples(torch.utils.data.Dataset):
    """MGRS records → dicts with the global view and the transformed object crops."""

    def __init__(self, records, size: int, augment: Augment | None = None, own_caption: str = "exclude"):
        self.records, self.transform, self.own_caption = records, ImageTransform(size, augment), own_caption

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        self.records.set_epoch(epoch)

    def __getitem__(self, index: int) -> dict:
        item = self.records[index]
        ids = [int(i) for i in item["category_ids"]]
        own_caption = item["own_caption"]
        with torch.random.fork_rng(devices=[]):  # augmentation drawn from (seed, epoch, index): resumable
            torch.manual_seed((self.records.seed * 1_000_003 + self.records.epoch) * 1_000_003 + index)
            image, crops = self.transform(item["image"]), [self.transform(c) for c in item["crops"]]
        return {"image": image, "caption": item["caption"], "crops": crops, "texts": item["texts"],
                "category_ids": [self._own_id(index, k) if own else i for k, (i, own) in enumerate(zip(ids, own_caption))]}

    def _own_id(self, index: int, k: int) -> int:
        """An object described by its own caption: −1 (left out, published) or a unique negative id."""
        return -1 if self.own_caption == "exclude" else -(index * 64 + k + 2)


class Collate:
    """A list of samples → one batch; captions and object texts tokenised to the model's context."""

    def __init__(self, stage: int, tokenizer, context_length: int, max_boxes: int):
        self.stage, self.tokenizer, self.context, self.max_boxes = stage, tokenizer, context_length, max_boxes

    def tokens(self, texts: list[str]) -> torch.Tensor:
        if not texts:
            return torch.zeros(0, self.context, dtype=torch.long)
        return self.tokenizer(texts, context_length=self.context)

    def __call__(self, samples: list[dict]) -> dict:
        batch = {"images": torch.stack([s["image"] for s in samples]),
                 "tokens": self.tokens([s["caption"] for s in samples])}
        if self.stage == 1:
            batch["boxes"] = torch.stack([s["boxes"] for s in samples])
            batch["crops"] = torch.cat([s["crops"] for s in samples])
            return batch
        slots = len(samples) * self.max_boxes
        valid = torch.zeros(slots, dtype=torch.bool)
        ids = torch.full((slots,), -1, dtype=torch.long)
        crops, texts = [], []
        for i, s in enumerate(samples):
            # the first max_boxes objects; those labelled −1 (own caption, published rule) take no part
            keep = [k for k in range(min(len(s["crops"]), self.max_boxes)) if s["category_ids"][k] != -1]
            n = len(keep)
            valid[i * self.max_boxes:i * self.max_boxes + n] = True
            ids[i * self.max_boxes:i * self.max_boxes + n] = torch.tensor([s["category_ids"][k] for k in keep],
                                                                          dtype=torch.long)
            crops += [s["crops"][k] for k in keep]
            texts += [s["texts"][k] for k in keep]
        size = batch["images"].shape[-1]
        batch.update(valid=valid, category_ids=ids, region_tokens=self.tokens(texts),
                     crops=torch.stack(crops) if crops else torch.zeros(0, 3, size, size))
        return batch


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
