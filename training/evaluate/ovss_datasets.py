"""The 8 OVSS benchmarks as the published evaluation (SegEarth-OV protocol) reads them.

Each spec: split folders under the dataset root, file suffixes, how labels map to class indices
(`reduce_zero_label`: 0 → ignored, k → k-1), the class lines (commas = synonyms), and the
background index and probability threshold of SegEarth-OV's improvement preset, as SegEarth-OV's
dataset configs (github.com/likyoo/SegEarth-OV, `configs/`) define them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL.Image import DecompressionBombError

from engine.errors import InputError
from training.data.images import stretched, to_rgb

IGNORE = 255


@dataclass(frozen=True)
class OVSSDataset:
    name: str
    image_dir: str
    label_dir: str
    image_suffix: str
    label_suffix: str
    classes: tuple[str, ...]
    reduce_zero_label: bool
    threshold: float
    background: int

    def pairs(self, root: str | Path) -> list[tuple[Path, Path]]:
        """(image, label) files of the evaluation split, sorted; a clear error when the layout is wrong."""
        root = Path(root)
        images_dir, labels_dir = root / self.image_dir, root / self.label_dir
        for folder in (images_dir, labels_dir):
            if not folder.is_dir():
                raise InputError(f"{self.name}: expected folder {folder} (layout: {self.image_dir}, {self.label_dir})")
        pairs = []
        for image in sorted(images_dir.glob(f"*{self.image_suffix}")):
            stem = image.name[: -len(self.image_suffix)]
            label = labels_dir / f"{stem}{self.label_suffix}"
            if not label.exists():
                raise InputError(f"{self.name}: no label {label.name} for image {image.name}")
            pairs.append((image, label))
        if not pairs:
            raise InputError(f"{self.name}: no *{self.image_suffix} images in {images_dir}")
        return pairs

    def to_train_ids(self, raw: np.ndarray) -> np.ndarray:
        """Label image values → class indices with 255 = ignore."""
        raw = raw.astype(np.int64)
        if self.reduce_zero_label:
            out = np.where(raw == 0, IGNORE, raw - 1)
            out = np.where(raw == IGNORE, IGNORE, out)
        else:
            out = raw
        out = np.where((out >= len(self.classes)) & (out != IGNORE), IGNORE, out)
        return out.astype(np.uint8)


DATASETS: dict[str, OVSSDataset] = {d.name: d for d in (
    OVSSDataset("openearthmap", "img_dir/val", "ann_dir/val", ".tif", ".tif",
                ("background", "bareland,barren", "grass", "pavement", "road", "tree,forest", "water,river",
                 "cropland", "building,roof,house"), False, 0.1, 0),
    OVSSDataset("loveda", "img_dir/val", "ann_dir/val", ".png", ".png",
                ("background", "building,roof,house", "road", "water", "barren", "forest", "agricultural"),
                True, 0.3, 0),
    OVSSDataset("isaid", "img_dir/val", "ann_dir/val", ".png", "_instance_color_RGB.png",
                ("background", "ship", "store tank", "baseball diamond", "tennis court", "basketball court",
                 "ground track field", "bridge", "large vehicle", "small vehicle", "helicopter", "swimming pool",
                 "roundabout", "soccer ball field", "plane", "harbor"), False, 0.4, 0),
    OVSSDataset("potsdam", "img_dir/val", "ann_dir/val", ".png", ".png",
                ("road,parking lot", "building", "low vegetation", "tree", "car", "clutter,background"),
                True, 0.1, 5),
    OVSSDataset("vaihingen", "img_dir/val", "ann_dir/val", ".png", ".png",
                ("impervious surface", "building", "low vegetation", "tree", "car", "clutter"), True, 0.1, 5),
    OVSSDataset("uavid", "img_dir/test", "ann_dir/test", ".png", ".png",
                ("background", "building", "road", "car", "tree", "vegetation", "human"), False, 0.3, 0),
    OVSSDataset("udd5", "val/src", "val/gt", ".JPG", ".png",
                ("vegetation", "building", "road", "vehicle", "background"), False, 0.4, 4),
    OVSSDataset("vdd", "test/src", "test/gt", ".JPG", ".png",
                ("background", "facade", "road", "vegetation", "vehicle", "roof", "water"), False, 0.3, 0),
)}


def get_dataset(name: str) -> OVSSDataset:
    key = name.strip().lower().replace("-", "").replace("_", "")
    if key not in DATASETS:
        raise InputError(f"unknown OVSS dataset '{name}' (one of: {', '.join(DATASETS)})")
    return DATASETS[key]


def read_image(path: Path) -> np.ndarray:
    """RGB uint8 H×W×3 of a benchmark image (PNG/JPG through Pillow, TIFF through rasterio)."""
    if path.suffix.lower() in (".tif", ".tiff"):
        import rasterio

        with rasterio.open(path) as ds:
            data = ds.read([1, 2, 3] if ds.count >= 3 else [1, 1, 1])
        return np.ascontiguousarray(stretched(data).transpose(1, 2, 0))
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(to_rgb(im))


def read_label(path: Path) -> np.ndarray:
    if path.suffix.lower() in (".tif", ".tiff"):
        import rasterio

        with rasterio.open(path) as ds:
            return ds.read(1)
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im)


def samples(dataset: OVSSDataset, root: str | Path, limit: int | None = None) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(name, RGB image, class-index label) for each evaluation image."""
    for image_path, label_path in dataset.pairs(root)[:limit]:
        label = _read(dataset, read_label, label_path)
        if label.ndim == 3:
            raise InputError(f"{dataset.name}: {label_path.name} is a colour image; use the converted "
                             f"single-channel labels (mmsegmentation layout)")
        image = _read(dataset, read_image, image_path)
        if image.shape[:2] != label.shape:  # the logits would be stretched onto it: a wrong score, said nowhere
            raise InputError(f"{dataset.name}: {label_path.name} is {label.shape[1]}×{label.shape[0]} px but its "
                             f"image {image_path.name} is {image.shape[1]}×{image.shape[0]}: a label must match "
                             f"its image pixel for pixel")
        yield image_path.name, image, dataset.to_train_ids(label)


def _read(dataset: OVSSDataset, reader, path: Path) -> np.ndarray:
    """`reader(path)`, a corrupt or unreadable file (PIL.UnidentifiedImageError, truncated data, rasterio
    errors) becoming one clear error."""
    try:
        return reader(path)
    except (OSError, ValueError, DecompressionBombError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{dataset.name}: cannot read {path}: {reason}") from None
