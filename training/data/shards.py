"""Stage 1's webdataset shards: the layouts met in practice, counting their samples, writing new ones.

A sample is the tar members that share a key (the member path up to the first dot of its file name).
Layouts read:

    RS5M      img_content (encoded image bytes) + caption (UTF-8); img_name is ignored
    common    jpg | jpeg | png | webp | tif | tiff  +  txt (the caption) or json ({"caption"|"text"|"title"})

A sample in any other layout stops the run with one line naming the keys it holds.

Counting: `sizes.json` beside the shards ({shard file name: samples}, the file open_clip reads and
`write_shards` writes) when it names every shard, else the local tars are scanned; `--samples N`
skips both (RS5M: 5,070,186).

Writing (`farslip data shards`): an image folder + captions from a CSV or JSON → `{00000..}.tar`
(`{key}.{ext}` holding the image file's own bytes + `{key}.txt`) and `sizes.json`. Skipped and
counted by reason: rows without an image name or a caption, images missing or of another type,
images that do not decode. Shards of an earlier run into the same folder that this run does not
write (`NNNNN.tar`, and `NNNNN.tar.partial` left by a stopped run) are removed.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from pathlib import Path
from typing import Callable, Iterator

from PIL import Image

from engine.errors import InputError, first_line
from training.data.images import to_rgb
from training.data.tables import csv_table

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "tif", "tiff")
IMAGE_KEYS = ("img_content",) + IMAGE_EXTENSIONS
JSON_CAPTION_KEYS = ("caption", "text", "title")
IMAGE_COLUMNS = ("filepath", "image", "filename", "file", "path", "img_name", "global_filepath")
CAPTION_COLUMNS = ("caption", "title", "text", "sentence", "global_caption")


def tar_samples(url: str) -> Iterator[dict]:
    """Raw samples {"__key__", "__url__", extension: bytes} of one shard, in tar order (local paths,
    `pipe:` commands and URLs, through webdataset's opener)."""
    from webdataset import gopen

    try:
        stream = gopen(url, "rb")
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            sample: dict = {}
            for member in tar:
                if not member.isfile():
                    continue
                folder, base = os.path.split(member.name)
                stem, _, ext = base.partition(".")
                key = f"{folder}/{stem}" if folder else stem
                if sample and sample["__key__"] != key:
                    yield sample
                    sample = {}
                if not sample:
                    sample = {"__key__": key, "__url__": url}
                if ext.lower() in sample:  # a second sample of the same name: its files would mix with the first's
                    raise InputError(f"shard {url} holds {member.name} twice in sample '{key}': each sample's "
                                     f"files need a name of their own (rebuild the shard)")
                sample[ext.lower()] = tar.extractfile(member).read()
            if sample:
                yield sample
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise InputError(f"cannot read shard {url}: {exc}") from None


def layout_error(sample: dict) -> InputError:
    keys = sorted(k for k in sample if not k.startswith("__"))
    return InputError(f"{sample.get('__url__', 'shard')}: sample '{sample.get('__key__')}' holds keys "
                      f"{', '.join(keys) or '(none)'}; readable layouts: img_content + caption (RS5M), "
                      f"{'/'.join(IMAGE_EXTENSIONS)} + txt or json")


def _caption(sample: dict) -> str | None:
    for key in ("caption", "txt"):
        if key in sample:
            return sample[key].decode("utf-8", errors="replace").strip() or None  # an empty one: none
    if "json" in sample:
        try:
            meta = json.loads(sample["json"])
        except ValueError:
            return None
        if isinstance(meta, str):
            return meta.strip() or None
        if isinstance(meta, dict):
            return next((str(meta[k]) for k in JSON_CAPTION_KEYS if meta.get(k)), None)
    return None


def decode_sample(sample: dict) -> tuple[Image.Image, str]:
    """(RGB PIL image, caption) of a raw sample in any readable layout."""
    image_key = next((k for k in IMAGE_KEYS if k in sample), None)
    caption = _caption(sample)
    if image_key is not None and caption is None and any(k in sample for k in ("caption", "txt")):
        raise InputError(f"{sample.get('__url__', 'shard')}: sample '{sample.get('__key__')}' has an empty "
                         f"caption: give it its text, or leave the sample out of the shard")
    if image_key is None or caption is None:
        raise layout_error(sample)
    try:
        with Image.open(io.BytesIO(sample[image_key])) as im:
            image = to_rgb(im)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"{sample.get('__url__')}: sample '{sample.get('__key__')}': cannot decode its "
                         f"{image_key} image ({first_line(exc)})") from None
    return image, caption


def count_samples(urls: list[str]) -> int:
    """Samples in the shards: from `sizes.json` beside them when it names every shard, else by reading
    each local tar's member list (a sample counts once however many files it holds)."""
    from_sizes = _sizes_json_total(urls)
    if from_sizes is not None:
        return from_sizes
    total = 0
    for url in urls:
        try:
            with tarfile.open(url) as tar:
                total += len({m.name.split(".", 1)[0] for m in tar.getmembers() if m.isfile()})
        except (OSError, tarfile.TarError) as exc:
            why = "an empty file" if os.path.isfile(url) and os.path.getsize(url) == 0 else " ".join(str(exc).split())
            raise InputError(f"cannot count the samples of {url} ({why}); pass --samples N") from None
    return total


def _sizes_json_total(urls: list[str]) -> int | None:
    folders = {os.path.dirname(u) for u in urls}
    if len(folders) != 1 or "://" in next(iter(folders)):
        return None
    path = Path(next(iter(folders)) or ".") / "sizes.json"
    try:
        sizes = json.loads(path.read_text(encoding="utf-8"))
        return sum(int(sizes[os.path.basename(u)]) for u in urls)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _column(header: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, source: str) -> str:
    if wanted:
        if wanted not in header:
            raise InputError(f"{source}: no '{wanted}' column/key (found: {', '.join(header)})")
        return wanted
    found = next((c for c in candidates if c in header), None)
    if found is None:
        raise InputError(f"{source}: no {what} column/key (tried {', '.join(candidates)}; found: {', '.join(header)})")
    return found


def read_captions(path: str | Path, image_key: str | None = None, caption_key: str | None = None) -> list[tuple[str, str]]:
    """(image path relative to the image folder, caption) pairs from a CSV (header row) or a JSON list of
    records or {image: caption} mapping; rows without an image name or a caption are left out."""
    return [(name, caption) for name, caption in _caption_rows(path, image_key, caption_key) if name and caption]


def _caption_rows(path: str | Path, image_key: str | None = None, caption_key: str | None = None) -> list[tuple[str, str]]:
    """Every row's (image name, caption), either of them possibly empty."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"captions {path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at position "
                         f"{exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise InputError(f"cannot read captions {path}: {exc.strerror or exc}") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InputError(f"cannot parse {path.name}: {exc}") from None
        if isinstance(data, dict) and all(isinstance(v, str) for v in data.values()):
            return [(str(k).strip(), v.strip()) for k, v in data.items()]
        if not isinstance(data, list) or not data or not all(isinstance(r, dict) for r in data):
            raise InputError(f"{path.name}: expected a list of records or an {{image: caption}} mapping")
        rows = data
    else:
        rows = [row for _, row in csv_table(text, path.name, tab=path.suffix.lower() == ".tsv")[1]]
        if not rows:
            raise InputError(f"{path.name}: no rows under a header")
    header = [str(k) for k in rows[0].keys() if k is not None]
    image_col = _column(header, image_key, IMAGE_COLUMNS, "image", path.name)
    caption_col = _column(header, caption_key, CAPTION_COLUMNS, "caption", path.name)

    def text_of(value) -> str:
        return "" if value is None else str(value).strip()

    return [(text_of(r.get(image_col)), text_of(r.get(caption_col))) for r in rows]


SHARD_NAME = re.compile(r"^\d{5}\.tar(\.partial)?$")
SKIP_REASONS = ("rows without an image name or caption", "images missing or not " + "/".join(IMAGE_EXTENSIONS),
                "images that do not decode")


def _decodes(payload: bytes) -> bool:
    """Whether training will decode the image (what `decode_sample` does, without keeping the pixels)."""
    try:
        with Image.open(io.BytesIO(payload)) as im:
            im.load()
        return True
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
        return False


def _output_folder(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"-o {out} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder {out}: {exc.strerror or exc}") from None


def write_shards(images: str | Path, captions: str | Path, out: str | Path, per_shard: int = 10000,
                 image_key: str | None = None, caption_key: str | None = None,
                 progress: Callable[[int, int], None] | None = None) -> dict:
    """Shards `out/{00000..}.tar` + `out/sizes.json`; returns {"shards", "samples", "skipped",
    "skipped_by" ({reason: count}), "removed" (earlier shards deleted), "spec"}.
    Rows without an image or caption, images that are missing, not of a readable type or that do not
    decode are skipped (counted by reason)."""
    if per_shard < 1:
        raise InputError("--per-shard must be at least 1")
    images, out = Path(images), Path(out)
    if not images.is_dir():
        raise InputError(f"image folder not found: {images}")
    rows = _caption_rows(captions, image_key, caption_key)
    _output_folder(out)
    sizes: dict[str, int] = {}
    skipped = dict.fromkeys(SKIP_REASONS, 0)
    no_row, no_image, no_decode = SKIP_REASONS
    tar, written = None, 0
    try:
        for n, (name, caption) in enumerate(rows):
            if progress is not None:
                progress(n + 1, len(rows))
            if not name or not caption:
                skipped[no_row] += 1
                continue
            file = images / name
            ext = file.suffix.lower().lstrip(".")
            try:
                payload = file.read_bytes() if ext in IMAGE_EXTENSIONS and file.is_file() else None
            except (OSError, ValueError):
                payload = None
            if payload is None:
                skipped[no_image] += 1
                continue
            if not _decodes(payload):
                skipped[no_decode] += 1
                continue
            if written % per_shard == 0:
                if tar is not None:
                    tar.close()
                shard = f"{written // per_shard:05d}.tar"
                tar = tarfile.open(out / f"{shard}.partial", "w")
                sizes[shard] = 0
            key = f"{written:09d}"
            for suffix, data in ((ext, payload), ("txt", caption.encode("utf-8"))):
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            sizes[shard] += 1
            written += 1
    finally:
        if tar is not None:
            tar.close()
    if not written:
        for shard in sizes:
            (out / f"{shard}.partial").unlink(missing_ok=True)
        reasons = ", ".join(f"{k}: {v}" for k, v in skipped.items() if v)
        raise InputError(f"no image of {captions} was found in {images} that decodes (looked for "
                         f"{', '.join(IMAGE_EXTENSIONS)}{'; skipped: ' + reasons if reasons else ''})")
    for shard in sizes:
        os.replace(out / f"{shard}.partial", out / shard)
    removed = 0
    for old in sorted(out.iterdir()):
        if SHARD_NAME.match(old.name) and old.name not in sizes and old.is_file():
            old.unlink()
            removed += old.name.endswith(".tar")
    (out / "sizes.json").write_text(json.dumps(sizes, indent=1), encoding="utf-8")
    last = len(sizes) - 1
    spec = str(out / (f"{{00000..{last:05d}}}.tar" if last else "00000.tar"))
    return {"shards": len(sizes), "samples": written, "skipped": sum(skipped.values()), "skipped_by": skipped,
            "removed": removed, "spec": spec}


__all__ = ["count_samples", "decode_sample", "read_captions", "tar_samples", "write_shards", "layout_error"]
