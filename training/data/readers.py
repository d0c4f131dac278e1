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
from training.data.images import to_rgb
from training.data.mgrs_schema import caption_of, category_warnings, check_records, own_caption

REGION_PROMPT = templates("region")[0]  # "a satellite image of {}": stage 2's text for an object's category


class MGRSDataset(torch.utils.data.Dataset):
    """Stage-2 samples: the global image and its scene caption, plus up to `max_boxes` objects (in a
    random order that changes with the epoch) each cropped from the original image, with box and
    category. Each box is first clipped to the image — [0, W] × [0, H] with the box's own W/H when the
    record gives them, else the image's size — then objects with a clipped area under `min_size`² or
    over `max_size`² px are left out (the published rule, in the published order).

    Records are checked against the schema when the file is read (`training.data.mgrs_schema`), and the
    image folder when the dataset is made: `root`, else the folder of text_info.json — or, when the
    first record's image is not there but in `global_imgs/` beside it (the MGRS-200k layout), that folder
    (`self.note` says so). A first image found in neither is refused in one line."""

    def __init__(self, text_info: str | Path, root: str | Path | None = None, max_boxes: int = 4,
                 min_size: int = 64, max_size: int = 1024, caption_key: str = "global_caption", seed: int = 0):
        path = Path(text_info)
        try:
            self.records = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read {path}: {exc}") from None
        check_records(self.records, path.name, caption_key)
        if not self.records:
            raise InputError(f"{path.name}: no records")
        self.root, self.note = image_root(path, root, self.records[0]["global_filepath"])
        self.warnings = category_warnings(self.records, path.name)
        self.max_boxes, self.min_size, self.max_size = max_boxes, min_size, max_size
        self.caption_key, self.seed, self.epoch = caption_key, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def objects(self, index: int, size: tuple[int, int]) -> list[dict]:
        """This epoch's objects of record `index` on an image of `size` (width, height): box (clipped),
        text, category, category id (−1 for an object with its own caption) and whether it has one.
        Boxes are clipped to the record's `W` × `H`, as the published code clips them, and to the image
        file itself, so that a record whose W/H exceed its image crops no black (a box wholly off the image
        is left out)."""
        kept = []
        for s in self.records[index].get("segment") or []:
            b = s["bbox"]
            x1, y1 = max(b["x1"], 0), max(b["y1"], 0)
            x2, y2 = min(b["x2"], b.get("W", size[0]), size[0]), min(b["y2"], b.get("H", size[1]), size[1])
            area = (x2 - x1) * (y2 - y1)
            if x2 <= x1 or y2 <= y1 or not self.min_size ** 2 <= area <= self.max_size ** 2:
                continue
            cap = own_caption(s)
            kept.append({"box": (x1, y1, x2, y2), "text": cap or REGION_PROMPT.format(s["category"]),
                         "category": s.get("category", ""), "category_id": -1 if cap else s["category_id"],
                         "own_caption": cap is not None})
        random.Random(hash((self.seed, self.epoch, index)) & 0xFFFFFFFF).shuffle(kept)
        return kept[: self.max_boxes]

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        path = self.root / record["global_filepath"]
        try:
            with Image.open(path) as im:
                image = to_rgb(im)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise InputError(f"record {index}: cannot read image {path}: {exc}") from None
        objects = self.objects(index, image.size)
        boxes = [o["box"] for o in objects]
        return {"image": image, "caption": caption_of(record, self.caption_key),
                "crops": [image.crop(tuple(round(v) for v in b)) for b in boxes],
                "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                "categories": [o["category"] for o in objects],
                "category_ids": torch.tensor([o["category_id"] for o in objects], dtype=torch.long),
                "texts": [o["text"] for o in objects],
                "own_caption": [o["own_caption"] for o in objects]}


def image_root(text_info: Path, root: str | Path | None, first: str) -> tuple[Path, str | None]:
    """(the folder the records' `global_filepath`s are relative to, a note when it was found rather
    than given), judged by the first record's image `first`."""
    beside = text_info.parent / "global_imgs"
    candidates = [Path(root)] if root else [text_info.parent, beside]
    for folder in candidates:
        if (folder / first).is_file():
            try:
                with Image.open(folder / first):
                    pass
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                raise InputError(f"record 0: cannot read image {folder / first}: {exc}") from None
            note = f"images found in {folder} (the MGRS-200k layout): using it as --data-root" \
                if folder == beside and not root else None
            return folder, note
    tried = " or ".join(str(folder / first) for folder in candidates)
    raise InputError(f"record 0's image not found at {tried}: pass --data-root <folder holding the images, "
                     f"e.g. {beside}>")


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
