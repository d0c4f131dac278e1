"""Zero-shot scene classification and image-text retrieval, with the engine's image/text encoders.

Data as SkyScript prepares it: a CSV per split with a `filepath` column (relative to the CSV's
folder unless absolute) and a `label` column (class index into `classnames.txt`, or the class
name) for classification, or a caption column (`caption`, `title`, `text` or `sentence`) for
retrieval. Images go through CLIP's evaluation transform as open_clip builds it (torchvision
`Resize(size)` bicubic on the shorter side, `CenterCrop(size)`, then RGB). Classification prompts:
the `rs` templates ("a satellite photo of {c}.", "a satellite image of {c}"), averaged. Retrieval,
as FarSLIP's tests/test_retrieval.py runs it: RSICD, RSITMD and UCM-captions captions get the prefix
"a satellite image. " (`caption_prefix`; recognised by the `dataset` name, else by the source's file
or folder name), then captions are de-duplicated on
their exact text (no whitespace folding); Long-CLIP models tokenise with context 248, others 77 (the
model's own context); empty captions are left out (and counted).

Image embeddings can be cached (an .npz in the results folder) so an interrupted run continues: the
cache is tied to the model (a SHA-256 of its weights) and each image's size and modification time, so
another model, or a replaced image, is encoded afresh (and so is a cache made with another image view,
`VIEW`).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engine.dense.scenes import SceneClassifier
from engine.errors import InputError
from engine.models import LoadedModel
from training.data.images import is_deep, to_rgb
from training.data.tables import csv_table
from training.evaluate.identity import file_stamp, model_identity
from training.evaluate.metrics import retrieval_metrics, topk_accuracy

CAPTION_COLUMNS = ("caption", "title", "text", "sentence")
# FarSLIP's published retrieval evaluation prefixes RSICD's, RSITMD's and UCM-captions' captions
PUBLISHED_CAPTION_PREFIX = "a satellite image. "
VIEW = "torchvision-resize-bicubic+centercrop"  # the image view embeddings are cached under
LINE = "\0line"  # a CSV row's line number, kept in its dict for messages


def clip_view(path: Path, size: int) -> np.ndarray:
    """The CLIP evaluation view of an image file: float [size, size, 3] in 0-1, made as open_clip's
    `image_transform(is_train=False)` makes it (FarSLIP's published evaluation): torchvision
    `Resize(size, BICUBIC)` (shorter side to `size`, the longer int(size · long / short)), then
    `CenterCrop(size)` (offset int(round((side − size) / 2))), then conversion to RGB, on the PIL image."""
    from torchvision.transforms import CenterCrop, InterpolationMode, Resize

    try:
        with Image.open(path) as im:
            im = to_rgb(im) if is_deep(im) else im  # deeper than 8 bits: stretched, not clipped to white
            im = CenterCrop(size)(Resize(size, interpolation=InterpolationMode.BICUBIC)(im))
            return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"cannot read image {path}: {exc}") from None


def read_caption_json(path: Path, images_root: str | Path | None = None, split: str = "test") -> list[dict]:
    """RSICD / RSITMD / UCM-captions JSON (`{"images": [{"filename", "split", "sentences": [{"raw"}]}]}`)
    as rows {filepath, caption}; images are looked for in `images_root` (default: beside the JSON)."""
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path.name}: {exc}") from None
    root = Path(images_root) if images_root else path.parent
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise InputError(f"{path.name}: expected a JSON object with an 'images' list "
                         f"(the RSICD / RSITMD / UCM-captions format)")
    rows = []
    for n, im in enumerate(data["images"]):
        if not isinstance(im, dict) or not isinstance(im.get("filename"), str) or not im["filename"].strip():
            raise InputError(f"{path.name}: images[{n}] has no 'filename'")
        if im.get("split", split) != split:
            continue
        sentences = im.get("sentences", [])
        if not isinstance(sentences, list):
            raise InputError(f"{path.name}: images[{n}].sentences is not a list")
        for k, sentence in enumerate(sentences):
            if not isinstance(sentence, dict) or not isinstance(sentence.get("raw"), str):
                raise InputError(f"{path.name}: images[{n}].sentences[{k}] has no 'raw' text")
            rows.append({"filepath": str(root / im["filename"]), "caption": sentence["raw"]})
    if not rows:
        raise InputError(f"{path.name}: no '{split}' images with sentences")
    return rows


def read_image_folder(root: str | Path) -> tuple[list[dict], list[str]]:
    """An image-folder dataset (one sub-folder per class, e.g. AID, EuroSAT): rows and class names."""
    root = Path(root)
    # hidden folders (.ipynb_checkpoints, .git) are no classes
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if root.is_dir() else []
    if not classes:
        raise InputError(f"{root}: expected one sub-folder per class")
    suffixes = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"}
    images = {c: [f for f in sorted((root / c).iterdir())
                  if f.suffix.lower() in suffixes and not f.name.startswith(".")] for c in classes}
    if not any(images.values()):
        raise InputError(f"{root}: its class sub-folders ({', '.join(classes[:5])}{' ...' if len(classes) > 5 else ''}) "
                         f"hold no images ({', '.join(sorted(suffixes))})")
    empty = [c for c in classes if not images[c]]
    if empty:  # a class without images would still be a candidate, changing every other image's result
        raise InputError(f"{root}: class sub-folder(s) {', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''} "
                         f"hold no images ({', '.join(sorted(suffixes))}): fill or remove them")
    rows = [{"filepath": str(f), "label": str(i)} for i, c in enumerate(classes) for f in images[c]]
    return rows, [c.replace("_", " ") for c in classes]


def read_csv(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"CSV not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {path.name}: {exc}") from None
    fields, table = csv_table(text, path.name)
    rows = [{**row, LINE: line} for line, row in table]
    if "filepath" not in fields:
        raise InputError(f"{path.name}: expected a header with a 'filepath' column")
    if not rows:
        raise InputError(f"{path.name}: no rows below the header")
    for row in rows:
        value = (row["filepath"] or "").strip()
        if not value:
            raise InputError(f"{path.name} line {row[LINE]}: empty filepath")
        row["filepath"] = str(Path(value) if Path(value).is_absolute() else path.parent / value)
    return rows


def published_caption_prefix(source: str | Path, dataset: str | None = None) -> str:
    """The caption prefix the published evaluation gives a retrieval set: "a satellite image. " for
    RSICD, RSITMD and UCM-captions, "" for any other. The set is `dataset` when named (e.g. the CLI's
    --name), else recognised in the source's file name or its folder's name (RSICD_img_txt_pairs_test.csv,
    dataset_rsicd.json, dataset_RSITMD.json, UCM_captions/dataset.json, ...)."""
    def known(name: str) -> bool:
        words = re.split(r"[^a-z0-9]+", name.lower())
        joined = "".join(words)
        return (any(d in joined for d in ("rsicd", "rsitmd", "ucmcaption"))
                or "ucm" in words)

    if dataset:
        return PUBLISHED_CAPTION_PREFIX if known(dataset) else ""
    source = Path(source)
    return PUBLISHED_CAPTION_PREFIX if known(source.stem) or known(source.parent.name) else ""


def _embed_images(model: LoadedModel, classifier: SceneClassifier, paths: list[str], progress=None,
                  cache: Path | None = None, identity: str | None = None) -> torch.Tensor:
    """Image embeddings in `paths` order; with `cache` (an .npz), finished ones are kept across runs for
    this model (the SHA-256 of its weights) and unchanged images (size and modification time)."""
    if not paths:
        raise InputError("no images to evaluate")
    done: dict[str, np.ndarray] = {}
    stamps: dict[str, str] = {}
    if cache is not None and identity is None:
        identity = model_identity(model)
    key = f"{identity}|{VIEW}"  # embeddings of another view of the images are not reused
    if cache is not None and cache.exists():
        try:
            with np.load(cache, allow_pickle=False) as saved:
                if {"model", "stamps"} <= set(saved.files) and str(saved["model"]) == key:
                    for p, stamp, e in zip((str(p) for p in saved["paths"]), saved["stamps"], saved["embeddings"]):
                        if file_stamp(p) == str(stamp):
                            done[p], stamps[p] = e, str(stamp)
        except (OSError, ValueError, KeyError):
            done, stamps = {}, {}  # an unreadable cache is rebuilt
    todo = [p for p in paths if p not in done]
    for n, start in enumerate(range(0, len(todo), classifier.batch_size), start=1):
        batch = todo[start:start + classifier.batch_size]
        stamps.update((p, file_stamp(p)) for p in batch)  # before reading: a file changed meanwhile is redone
        embeddings = classifier.embed([clip_view(Path(p), model.image_size) for p in batch]).cpu().numpy()
        done.update(zip(batch, embeddings))
        if progress is not None:
            progress(len(paths) - len(todo) + start + len(batch), len(paths))
        if cache is not None and (n % 20 == 0 or start + len(batch) == len(todo)):
            partial = cache.with_name(f".{cache.stem}.partial.npz")
            np.savez(partial, model=np.array(key), paths=np.array(list(done), dtype=str),
                     stamps=np.array([stamps[p] for p in done], dtype=str), embeddings=np.stack(list(done.values())))
            partial.replace(cache)
    return torch.from_numpy(np.stack([done[p] for p in paths])).to(classifier.text.device)


def _limited(rows: list[dict], limit: int | None) -> list[dict]:
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be at least 1 (got {limit})")
    return rows[:limit]


def evaluate_classification(model: LoadedModel, source: str | Path, classnames: str | Path | None = None,
                            limit: int | None = None, progress=None, cache: Path | None = None) -> dict:
    """`source`: a split CSV (with `classnames`), or an image folder with one sub-folder per class."""
    if Path(source).is_dir():
        rows, names = read_image_folder(source)
    else:
        if classnames is None:
            raise InputError("a CSV split needs its classnames.txt")
        try:
            text = Path(classnames).read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise InputError(f"class names file not found: {classnames}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read class names {classnames}: {getattr(exc, 'strerror', None) or exc}") from None
        names = [line.strip() for line in text.splitlines() if line.strip()]
        rows = read_csv(source)
        if "label" not in rows[0]:
            raise InputError(f"{Path(source).name}: expected a 'label' column")
    if not names:
        raise InputError(f"{classnames} lists no classes")
    rows = _limited(rows, limit)
    index = {n.lower(): i for i, n in enumerate(names)}
    truth = []
    for row in rows:
        value = (row["label"] or "").strip()
        where = f"{Path(source).name} line {row[LINE]}" if LINE in row else Path(row["filepath"]).name
        if not value:
            raise InputError(f"{where}: empty label")
        label = int(value) if value.isdigit() else index.get(value.lower())
        if label is None or not 0 <= label < len(names):
            raise InputError(f"{where}: label '{value}' is not a class of {Path(classnames).name}")
        truth.append(label)
    classifier = SceneClassifier(model, [n.replace(",", " ") for n in names], template_set="rs")
    identity = model_identity(model)
    embeddings = _embed_images(model, classifier, [r["filepath"] for r in rows], progress, cache, identity)
    scores = classifier.probabilities(embeddings).cpu().numpy()
    truth_arr = np.array(truth)
    return {"task": "classification", "model": model.name, "model_sha256": identity, "images": len(rows), "classes": len(names),
            "units": "percent", "top1": 100 * topk_accuracy(scores, truth_arr, 1), "top5": 100 * topk_accuracy(scores, truth_arr, 5)}


def evaluate_retrieval(model: LoadedModel, source: str | Path, caption_column: str | None = None,
                       limit: int | None = None, progress=None, images_root: str | Path | None = None,
                       cache: Path | None = None, notice=None, caption_prefix: str | None = None,
                       dataset: str | None = None) -> dict:
    """`source`: a CSV (filepath + caption column) or the datasets' caption JSON (test split). Rows with an
    empty caption are left out (`notice(text)` hears how many); a set with no caption left is refused.

    `caption_prefix` goes before every caption; None (the default) is the published one for the set
    (`published_caption_prefix` of `source` and `dataset`: "a satellite image. " for RSICD, RSITMD and
    UCM-captions, else none), "" none. Captions are then de-duplicated on their exact text, as
    published (pandas `groupby` on the prefixed caption): each distinct text is one query, positive for
    every image it describes."""
    source = Path(source)
    rows = _limited(read_caption_json(source, images_root) if source.suffix.lower() == ".json" else read_csv(source),
                    limit)
    column = caption_column or next((c for c in CAPTION_COLUMNS if c in rows[0]), None)
    if column is None or column not in rows[0]:
        raise InputError(f"{source.name}: no caption column (tried {', '.join(CAPTION_COLUMNS)})")
    prefix = published_caption_prefix(source, dataset) if caption_prefix is None else caption_prefix
    images: dict[str, int] = {}
    texts: dict[str, int] = {}
    image_to_texts: list[set[int]] = []
    empty = 0
    for row in rows:
        raw = row[column] or ""
        if not raw.strip():
            empty += 1
            continue
        i = images.setdefault(row["filepath"], len(images))
        t = texts.setdefault(prefix + raw, len(texts))
        if i == len(image_to_texts):
            image_to_texts.append(set())
        image_to_texts[i].add(t)
    if not texts:
        raise InputError(f"{source.name}: every caption is empty ({empty} rows)")
    if caption_prefix is None and prefix and notice is not None:
        notice(f"{source.name}: captions prefixed with {prefix!r}, as FarSLIP's published evaluation does "
               f"for RSICD, RSITMD and UCM-captions")
    if empty and notice is not None:
        notice(f"{source.name}: {empty} row(s) with an empty caption left out")
    classifier = SceneClassifier(model, ["placeholder"], template_set="name")
    identity = model_identity(model)
    image_emb = _embed_images(model, classifier, list(images), progress, cache, identity)
    text_emb = model.encode_text(list(texts))
    similarity = (image_emb @ text_emb.T).cpu().numpy()
    result = retrieval_metrics(similarity, image_to_texts)
    return {"task": "retrieval", "model": model.name, "model_sha256": identity, "images": len(images),
            "captions": len(texts), "empty_captions_dropped": empty, "caption_prefix": prefix,
            "context_length": model.context_length, "units": "percent", **result}
