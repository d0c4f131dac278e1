"""Build an MGRS-200k-style dataset from detection annotations: tiles, boxes, categories, captions.

    farslip data build-mgrs --source dota:/data/DOTA --source dior:/data/DIOR --source coco:/data/x.json -o out/

Output (MGRS-200k's schema): `out/text_info.json` — a list of records
    {"global_filepath": "images/<tile>.png", "brief_caption", "detailed_caption", "global_caption",
     "segment": [{"bbox": {"x1", "y1", "x2", "y2", "W", "H"}, "category", "category_id"}], "source"}
plus `out/images/`, and a dataset card (`card.json`, `card.md`: images, objects per category, how many
of them stage 2 will use — area within 64²–1024² px, at most 4 per image an epoch —, caption lengths,
every problem counted). Large images are cut into tiles of at most `tile` px; a box keeps
at least half its area in a tile or is dropped there; boxes with a coordinate that is not a finite
number, with no area, with less than half their area inside the image, smaller than `min_box` px or
without a category are dropped and counted. 16-bit greyscale images are scaled to 8 bits. Category
ids follow the sorted category names.
Deterministic (no randomness); resumable: each finished source image is appended to
`out/progress.jsonl`, and a rerun skips those.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from engine.dense.sliding import window_starts
from engine.errors import InputError
from training.data.captions import Captioner, TemplateCaptioner
from training.data.categories import CategoryTable
from training.data.images import stretched, to_rgb
from training.data.sources import SourceImage, path_exists, read_source

from training.config import TrainConfig

# stage 2's defaults, for the card's count of the objects training will use
TRAIN_MIN_BOX, TRAIN_MAX_BOX, TRAIN_MAX_BOXES = TrainConfig.min_box, TrainConfig.max_box, TrainConfig.max_boxes

Image.MAX_IMAGE_PIXELS = None  # remote-sensing scenes are large; they are tiled below


@dataclass
class BuildOptions:
    tile: int = 1024
    min_box: float = 8.0
    keep_fraction: float = 0.5
    image_format: str = "png"

    def check(self) -> None:
        if not isinstance(self.tile, int) or self.tile < MIN_TILE:
            raise InputError(f"--tile must be a whole number of at least {MIN_TILE} px (got {self.tile})")
        if not math.isfinite(self.min_box) or self.min_box < 0:
            raise InputError(f"--min-box must be a number of px, 0 or more (got {self.min_box})")


MIN_TILE = 64  # stage 2 leaves out objects under 64² px: a smaller tile could hold none of them


def _load_image(item: SourceImage) -> Image.Image:
    if item.path.suffix.lower() in (".tif", ".tiff"):
        import rasterio

        with rasterio.open(item.path) as ds:
            data = ds.read([1, 2, 3] if ds.count >= 3 else [1, 1, 1])
        return Image.fromarray(np.ascontiguousarray(stretched(data).transpose(1, 2, 0)))
    with Image.open(item.path) as im:
        return to_rgb(im)


def _tiles(width: int, height: int, tile: int) -> list[tuple[int, int, int, int]]:
    """Tiles (x, y, w, h) of at most `tile` px, edge to edge, the last ones shifted inward."""
    return [(x, y, min(tile, width), min(tile, height))
            for y in window_starts(height, tile, tile) for x in window_starts(width, tile, tile)]


def _safe(key: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in key)


def process_image(item: SourceImage, out: Path, options: BuildOptions, categories: CategoryTable,
                  captioner: Captioner, problems: Counter) -> list[dict]:
    """Records (tiles with objects) of one source image; problems counted in `problems`."""
    for problem in item.problems:
        problems[problem] += 1
    if item.broken or not path_exists(item.path):
        return []
    try:
        image = _load_image(item)
    except (OSError, ValueError, SyntaxError):
        problems["unreadable image"] += 1
        return []
    width, height = image.size
    objects = []
    for obj in item.objects:
        name = categories(obj.category)
        if not name:
            problems["empty category"] += 1
            continue
        if not all(math.isfinite(v) for v in (obj.x1, obj.y1, obj.x2, obj.y2)):
            problems["box with a non-finite coordinate (nan, inf)"] += 1
            continue
        if obj.x2 <= obj.x1 or obj.y2 <= obj.y1:
            problems["box with no area"] += 1
            continue
        x1, y1, x2, y2 = max(0.0, obj.x1), max(0.0, obj.y1), min(float(width), obj.x2), min(float(height), obj.y2)
        if x2 <= x1 or y2 <= y1:
            problems["box outside the image"] += 1
            continue
        if (x2 - x1) * (y2 - y1) < options.keep_fraction * (obj.x2 - obj.x1) * (obj.y2 - obj.y1):
            problems["box mostly outside the image"] += 1  # the same rule as a tile's: half its area or more
            continue
        if (x2 - x1) < options.min_box or (y2 - y1) < options.min_box:
            problems["box smaller than min_box"] += 1
            continue
        objects.append((x1, y1, x2, y2, name))
    records = []
    for tx, ty, tw, th in _tiles(width, height, options.tile):
        segment = []
        for x1, y1, x2, y2, name in objects:
            cx1, cy1, cx2, cy2 = max(x1, tx), max(y1, ty), min(x2, tx + tw), min(y2, ty + th)
            if cx2 <= cx1 or cy2 <= cy1:
                continue
            if (cx2 - cx1) * (cy2 - cy1) < options.keep_fraction * (x2 - x1) * (y2 - y1):
                continue
            if (cx2 - cx1) < options.min_box or (cy2 - cy1) < options.min_box:
                continue
            segment.append({"bbox": {"x1": round(cx1 - tx, 2), "y1": round(cy1 - ty, 2), "x2": round(cx2 - tx, 2),
                                     "y2": round(cy2 - ty, 2), "W": tw, "H": th}, "category": name})
        if not segment:
            continue
        crop = image.crop((tx, ty, tx + tw, ty + th))
        name = f"{_safe(item.key)}_{ty}_{tx}.{options.image_format}"
        crop.save(out / "images" / name)
        captions = captioner(crop, segment)
        records.append({"global_filepath": f"images/{name}", "brief_caption": captions["brief_caption"],
                        "detailed_caption": captions["detailed_caption"],
                        "global_caption": captions.get("global_caption", captions["detailed_caption"]),
                        "segment": segment, "source": item.key})
    if objects and not records:
        problems["image whose objects fit no tile"] += 1
    return records


def build_mgrs(sources: list[str], out_dir: str | Path, options: BuildOptions | None = None,
               categories: CategoryTable | None = None, captioner: Captioner | None = None,
               progress=None) -> dict:
    options = options or BuildOptions()
    categories = categories or CategoryTable()
    captioner = captioner or TemplateCaptioner()
    options.check()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"-o {out} is a file, not a folder")
    try:
        (out / "images").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder {out}: {exc.strerror or exc}") from None
    log_path = out / "progress.jsonl"
    done: dict[str, dict] = {}
    if log_path.exists():
        for line in log_path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                entry = json.loads(line)
                done[entry["key"]] = entry
    items = [item for spec in sources for item in read_source(spec)]
    seen: set[str] = set()
    duplicates = 0
    with open(log_path, "a", encoding="utf-8") as log:
        for n, item in enumerate(items, start=1):
            if item.key in seen:  # the same image id twice in the sources: the first one counts
                duplicates += 1
                continue
            seen.add(item.key)
            if item.key in done:
                continue
            problems: Counter = Counter()
            records = process_image(item, out, options, categories, captioner, problems)
            entry = {"key": item.key, "records": records, "problems": dict(problems)}
            if item.whole_source:
                entry["whole_source"] = True
            log.write(json.dumps(entry) + "\n")
            log.flush()
            done[item.key] = entry
            if progress is not None:
                progress(n, len(items))
    return _finish(out, [done[k] for k in done if k in seen], sources, duplicates)


def _trainable(records: list[dict]) -> dict:
    """What stage 2 will use of the objects under its default settings: those with an area within
    min_box²–max_box² px, and of those at most max_boxes per image each epoch."""
    in_range: Counter = Counter()
    per_epoch = 0
    for r in records:
        kept = [s for s in r["segment"] if TRAIN_MIN_BOX ** 2 <= (s["bbox"]["x2"] - s["bbox"]["x1"])
                * (s["bbox"]["y2"] - s["bbox"]["y1"]) <= TRAIN_MAX_BOX ** 2]
        in_range.update(s["category"] for s in kept)
        per_epoch += min(len(kept), TRAIN_MAX_BOXES)
    return {"objects_in_size_range": sum(in_range.values()), "objects_per_epoch": per_epoch,
            "categories_in_size_range": dict(sorted(in_range.items()))}


def _finish(out: Path, entries: list[dict], sources: list[str], duplicates: int = 0) -> dict:
    records = [r for e in entries for r in e["records"]]
    names = sorted({s["category"] for r in records for s in r["segment"]})
    ids = {name: i for i, name in enumerate(names)}
    for record in records:
        for s in record["segment"]:
            s["category_id"] = ids[s["category"]]
    partial = out / ".text_info.json.partial"
    partial.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    os.replace(partial, out / "text_info.json")
    problems: Counter = Counter()
    for e in entries:
        problems.update(e["problems"])
    if duplicates:
        problems["duplicated image id"] += duplicates
    per_category = Counter(s["category"] for r in records for s in r["segment"])
    trainable = _trainable(records)
    lengths = [len(r["detailed_caption"].split()) for r in records]
    card = {"sources": sources, "source_images": sum(not e.get("whole_source") for e in entries), "images": len(records),
            "objects": sum(per_category.values()), "categories": dict(sorted(per_category.items())),
            "category_ids": ids, **trainable,
            "caption_words": {"mean": float(np.mean(lengths)) if lengths else 0.0,
                              "min": min(lengths, default=0), "max": max(lengths, default=0)},
            "problems": dict(sorted(problems.items()))}
    (out / "card.json").write_text(json.dumps(card, indent=2), encoding="utf-8")
    lines = ["# MGRS-style dataset card", "", f"Sources: {', '.join(sources)}", "",
             f"- source images: {card['source_images']}", f"- images (tiles with objects): {card['images']}",
             f"- objects: {card['objects']}; {card['objects_in_size_range']} within stage 2's "
             f"{TRAIN_MIN_BOX}²–{TRAIN_MAX_BOX}² px area range, {card['objects_per_epoch']} used per epoch "
             f"(at most {TRAIN_MAX_BOXES} per image)",
             f"- detailed caption words: mean {card['caption_words']['mean']:.1f}, "
             f"min {card['caption_words']['min']}, max {card['caption_words']['max']}", "",
             "| category | id | objects | in size range |", "|---|---|---|---|"]
    lines += [f"| {c} | {ids[c]} | {n} | {card['categories_in_size_range'].get(c, 0)} |"
              for c, n in sorted(per_category.items())]
    lines += ["", "Problems (counted and skipped):", ""]
    lines += [f"- {p}: {n}" for p, n in sorted(problems.items())] or ["- none"]
    (out / "card.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    if not records:
        raise InputError("no image with a usable object was found in the sources (see card.md)")
    return card
