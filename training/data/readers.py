"""Training-time readers: the MGRS `text_info.json` dataset (stage 2), shard-spec expansion (stage 1;
the shards themselves: `training.data.shards` and `.stream`) and the random local-crop views of
stage 1's patch-to-patch distillation."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from PIL import Image

from engine.dense.prompts import templates
from engine.errors import InputError

REGION_PROMPT = templates("region")[0]  # "a satellite image of {}": stage 2's text for an object's category


class MGRSDataset(torch.utils.data.Dataset):
    """Stage-2 samples: the global image and its scene caption, plus up to `max_boxes` objects (in a
    random order that changes with the epoch) each cropped from the original image, with box and
    category. Objects with an area under `min_size`² or over `max_size`² px are left out (the published rule)."""

    def __init__(self, text_info: str | Path, root: str | Path | None = None, max_boxes: int = 4,
                 min_size: int = 64, max_size: int = 1024, caption_key: str = "global_caption", seed: int = 0):
        path = Path(text_info)
        try:
            self.records = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read {path}: {exc}") from None
        if not isinstance(self.records, list):
            raise InputError(f"{path.name}: expected a list of records")
        self.root = Path(root) if root else path.parent
        self.max_boxes, self.min_size, self.max_size = max_boxes, min_size, max_size
        self.caption_key, self.seed, self.epoch = caption_key, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def objects(self, index: int) -> list[dict]:
        record = self.records[index]
        kept = []
        for s in record.get("segment", []):
            b = s["bbox"]
            area = (b["x2"] - b["x1"]) * (b["y2"] - b["y1"])
            if self.min_size ** 2 <= area <= self.max_size ** 2:
                kept.append(s)
        random.Random(hash((self.seed, self.epoch, index)) & 0xFFFFFFFF).shuffle(kept)
        return kept[: self.max_boxes]

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        path = self.root / record["global_filepath"]
        try:
            with Image.open(path) as im:
                image = im.convert("RGB")
        except (OSError, ValueError) as exc:
            raise InputError(f"record {index}: cannot read image {path}: {exc.__class__.__name__}") from None
        caption = record.get(self.caption_key) or record.get("detailed_caption") or record.get("brief_caption", "")
        objects = self.objects(index)
        boxes = [(s["bbox"]["x1"], s["bbox"]["y1"], s["bbox"]["x2"], s["bbox"]["y2"]) for s in objects]
        return {"image": image, "caption": caption, "crops": [image.crop(tuple(round(v) for v in b)) for b in boxes],
                "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                "categories": [s["category"] for s in objects],
                "category_ids": torch.tensor([s["category_id"] for s in objects], dtype=torch.long),
                "texts": [s.get("cap") or REGION_PROMPT.format(s["category"]) for s in objects],
                "own_caption": [bool(s.get("cap")) for s in objects]}


def expand_shards(spec: str) -> list[str]:
    """'rs5m/{0000..0031}.tar' → the 32 shard paths (webdataset's brace expansion)."""
    import braceexpand

    urls = [u for part in spec.split("::") for u in braceexpand.braceexpand(part)]
    if not urls:
        raise InputError(f"no shards in '{spec}'")
    return urls


def local_crop_boxes(width: int, height: int, count: int = 4, scale=(0.3, 0.7), ratio=(3 / 4, 4 / 3),
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Stage 1's local views: `count` RandomResizedCrop boxes [x1, y1, x2, y2] in pixels."""
    from torchvision.transforms import RandomResizedCrop

    image = torch.empty(1, height, width)
    boxes = []
    for _ in range(count):
        if generator is not None:
            state = torch.random.get_rng_state()
            torch.random.set_rng_state(generator.get_state())
        top, left, h, w = RandomResizedCrop.get_params(image, scale=list(scale), ratio=list(ratio))
        if generator is not None:
            generator.set_state(torch.random.get_rng_state())
            torch.random.set_rng_state(state)
        boxes.append([left, top, left + w, top + h])
    return torch.tensor(boxes, dtype=torch.float32)
