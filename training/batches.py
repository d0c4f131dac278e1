"""Training samples → model-ready batches, for both stages.

Images are resized (bicubic) to the model's square input and normalised with the engine's
`prepare_image` (CLIP mean/std, RGB), so training sees pixels exactly as inference does.

Stage 1 (RS5M-style shards): the global image, its caption, and `max_boxes` random local crops
(RandomResizedCrop boxes, DESIGN.md) — each crop cut from the original image and resized on its own
(the teacher's input), its box expressed in the resized global image's pixels (the student's RoI).

Stage 2 (MGRS): the global image, its long caption, and up to `max_boxes` objects, each cropped from
the original image, with its category text and id. Ranks must exchange fixed-size tensors, so objects
are padded to batch × max_boxes slots with a `valid` mask; an object described by its own caption
gets a unique negative id (its only positive is itself).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from engine.dense import prepare_image
from training.data.readers import local_crop_boxes


class ImageTransform:
    """PIL image → normalised float tensor [3, size, size]."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image: Image.Image) -> torch.Tensor:
        resized = image.convert("RGB").resize((self.size, self.size), Image.BICUBIC)
        return prepare_image(np.array(resized))


class Stage1Sample:
    """(PIL image, caption) → dict with the global view, local crops and their boxes (picklable, so it
    runs in data-loading workers)."""

    def __init__(self, size: int, max_boxes: int, scale, ratio):
        self.transform = ImageTransform(size)
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

    def __init__(self, records, size: int):
        self.records, self.transform = records, ImageTransform(size)

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        self.records.set_epoch(epoch)

    def __getitem__(self, index: int) -> dict:
        item = self.records[index]
        ids = [int(i) for i in item["category_ids"]]
        own_caption = item["own_caption"]
        return {"image": self.transform(item["image"]), "caption": item["caption"],
                "crops": [self.transform(c) for c in item["crops"]], "texts": item["texts"],
                "category_ids": [-(index * 64 + k + 2) if own else i for k, (i, own) in enumerate(zip(ids, own_caption))]}


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
            n = min(len(s["crops"]), self.max_boxes)
            valid[i * self.max_boxes:i * self.max_boxes + n] = True
            ids[i * self.max_boxes:i * self.max_boxes + n] = torch.tensor(s["category_ids"][:n], dtype=torch.long)
            crops += s["crops"][:n]
            texts += s["texts"][:n]
        size = batch["images"].shape[-1]
        batch.update(valid=valid, category_ids=ids, region_tokens=self.tokens(texts),
                     crops=torch.stack(crops) if crops else torch.zeros(0, 3, size, size))
        return batch


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
