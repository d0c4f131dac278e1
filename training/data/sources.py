"""Readers of remote-sensing detection annotations, all yielding the same `SourceImage` records.

    dota:/root          images/*.png + labelTxt/*.txt (x1 y1 ... x4 y4 category difficult; oriented → axis-aligned)
    dior:/root, voc:/root   Annotations/*.xml (VOC) + the images beside them (JPEGImages*/)
    coco:/path.json     COCO instances JSON (images, annotations with [x, y, w, h], categories)
    gpkg:/labels.gpkg@/raster.tif   a QGIS labels layer (polygons + `class`) over a raster (the plugin's labels)

Problems in one file (unreadable XML, a line that is no box, a box with no category, an image file name
the file system refuses, a COCO annotation of no known image) are counted, not raised: a build reports
them in its card and goes on. A source that cannot be read as a whole (a COCO JSON that is not an object
of lists, two COCO categories sharing one id under different names) is refused in one line.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from engine.errors import InputError, first_line

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


@dataclass
class SourceObject:
    x1: float
    y1: float
    x2: float
    y2: float
    category: str


@dataclass
class SourceImage:
    key: str  # unique and stable: "<format>:<relative name>"
    path: Path
    objects: list[SourceObject]
    problems: list[str] = field(default_factory=list)
    broken: bool = False  # the annotation itself could not be read: nothing to build from
    whole_source: bool = False  # no image: the problems of a source as a whole (counted, not an image)


def parse_spec(spec: str) -> tuple[str, str]:
    kind, _, location = spec.partition(":")
    kind = kind.strip().lower()
    if kind not in READERS or not location:
        raise InputError(f"unknown source '{spec}' (use dota:PATH, dior:PATH, voc:PATH, coco:FILE.json, "
                         f"gpkg:LABELS.gpkg@RASTER.tif)")
    return kind, location


def read_source(spec: str) -> Iterator[SourceImage]:
    kind, location = parse_spec(spec)
    return READERS[kind](location)


def path_exists(path: Path) -> bool:
    """Whether a file is there; False, not an error, for a name the file system refuses (too long, a NUL)."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def _find_image(folder_candidates: list[Path], stem: str) -> Path | None:
    for folder in folder_candidates:
        for suffix in IMAGE_SUFFIXES:
            for name in (stem + suffix, stem + suffix.upper()):
                if path_exists(folder / name):
                    return folder / name
    return None


def _dota_category(tokens: list[str]) -> str:
    """The words after a DOTA line's 8 coordinates: the category, then (usually) the difficulty flag
    0/1/2; a category may hold spaces ("solar panel 0" → "solar panel", "Boeing 737 1" → "Boeing 737")."""
    if len(tokens) > 1 and tokens[-1] in ("0", "1", "2"):
        tokens = tokens[:-1]
    if not tokens:
        raise IndexError("no category")
    return " ".join(tokens)


def read_dota(root: str) -> Iterator[SourceImage]:
    root_path = Path(root)
    labels = root_path / "labelTxt"
    if not labels.is_dir():
        raise InputError(f"DOTA: expected {labels}")
    images = [root_path / "images", root_path]
    for txt in sorted(labels.glob("*.txt")):
        image = _find_image(images, txt.stem)
        item = SourceImage(f"dota:{txt.stem}", image or root_path / "images" / f"{txt.stem}.png", [])
        if image is None:
            item.problems.append("missing image")
        for line in txt.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.split()
            if not parts or line.startswith(("imagesource", "gsd")):
                continue
            try:
                xs = [float(v) for v in parts[0:8:2]]
                ys = [float(v) for v in parts[1:8:2]]
                category = _dota_category(parts[8:])
            except (ValueError, IndexError):
                item.problems.append("line that is no box")
                continue
            item.objects.append(SourceObject(min(xs), min(ys), max(xs), max(ys), category))
        yield item


def read_voc(root: str) -> Iterator[SourceImage]:
    root_path = Path(root)
    annotations = root_path / "Annotations"
    if not annotations.is_dir():
        raise InputError(f"VOC/DIOR: expected {annotations}")
    image_dirs = sorted(p for p in root_path.iterdir() if p.is_dir() and p.name.lower().startswith("jpegimages"))
    image_dirs += [root_path / "images", root_path]
    for xml_path in sorted(annotations.rglob("*.xml")):
        try:
            tree = ET.parse(xml_path).getroot()
        except ET.ParseError:
            yield SourceImage(f"voc:{xml_path.stem}", xml_path, [], problems=["unreadable XML"], broken=True)
            continue
        filename = (tree.findtext("filename") or xml_path.stem).strip()  # may be too long a name: missing image
        image = _find_image(image_dirs, Path(filename).stem)
        item = SourceImage(f"voc:{xml_path.stem}", image or root_path / filename, [])
        if image is None:
            item.problems.append("missing image")
        for obj in tree.iter("object"):
            name = (obj.findtext("name") or "").strip()
            box = obj.find("bndbox")
            box = box if box is not None else obj.find("robndbox")
            try:
                coords = [float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
            except (AttributeError, TypeError, ValueError):
                item.problems.append("object without a box")
                continue
            item.objects.append(SourceObject(*coords, name))
        yield item


def _coco_list(data: dict, key: str, json_path: Path) -> list:
    value = data.get(key, [])
    if value is None:
        return []
    if not isinstance(value, list):
        found = "an object" if isinstance(value, dict) else type(value).__name__
        raise InputError(f"COCO {json_path}: '{key}' is {found}, not a list of records")
    return value


def _hashable_id(value) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def read_coco(path: str) -> Iterator[SourceImage]:
    """COCO instances JSON. Refused in one line: a file that is not a JSON object, `images`/`annotations`/
    `categories` that are not lists, one category id given two different names. Counted: records that
    are not objects, annotations without an image id or of an image id the file does not list."""
    json_path = Path(path)
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"COCO: cannot read {json_path}: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"COCO {json_path}: expected a JSON object with images, annotations and categories, "
                         f"found a {type(data).__name__}")
    images, annotations = _coco_list(data, "images", json_path), _coco_list(data, "annotations", json_path)
    source_problems: list[str] = []
    categories: dict = {}
    for c in _coco_list(data, "categories", json_path):
        if not isinstance(c, dict) or not _hashable_id(c.get("id")):
            source_problems.append("category record without an id")
            continue
        if c["id"] in categories and categories[c["id"]] != c.get("name"):
            raise InputError(f"COCO {json_path}: category id {c['id']} is named both '{categories[c['id']]}' and "
                             f"'{c.get('name')}'; give each category its own id")
        categories[c["id"]] = c.get("name")
    image_ids = {image.get("id") for image in images if isinstance(image, dict) and _hashable_id(image.get("id"))}
    by_image: dict = {}
    for ann in annotations:
        if not isinstance(ann, dict):
            source_problems.append("annotation that is not a record")
        elif not _hashable_id(ann.get("image_id")):
            source_problems.append("annotation without an image id")
        elif ann["image_id"] not in image_ids:
            source_problems.append("annotation of an unknown image id")
        else:
            by_image.setdefault(ann["image_id"], []).append(ann)
    for image in images:
        if not isinstance(image, dict) or not _hashable_id(image.get("id")):
            source_problems.append("image record without an id")
            continue
        key = f"coco:{image.get('id')}"
        file_name = str(image.get("file_name", ""))
        item = SourceImage(key, json_path.parent / file_name, [])
        if not file_name or not path_exists(item.path):
            for folder in (json_path.parent / "images", json_path.parent.parent / "images"):
                if file_name and path_exists(folder / file_name):
                    item.path = folder / file_name
        if not file_name or not path_exists(item.path):
            item.problems.append("missing image")
        for ann in by_image.get(image.get("id"), []):
            try:
                x, y, w, h = (float(v) for v in ann["bbox"])
            except (KeyError, TypeError, ValueError):
                item.problems.append("annotation without a box")
                continue
            category = categories.get(ann.get("category_id")) if _hashable_id(ann.get("category_id")) else None
            if not category or not isinstance(category, str):
                item.problems.append("unknown category id")
                continue
            item.objects.append(SourceObject(x, y, x + w, y + h, category))
        yield item
    if source_problems:
        yield SourceImage(f"coco:{json_path}#source", json_path, [], problems=source_problems, broken=True,
                          whole_source=True)


def read_gpkg(location: str) -> Iterator[SourceImage]:
    """The plugin's "FarSLIP labels" (polygons with a `class` field) over the raster they were drawn on."""
    import numpy as np
    import rasterio
    import shapely
    from pyogrio.raw import read
    from rasterio.warp import transform_geom

    labels, _, raster = location.partition("@")
    if not raster:
        raise InputError("gpkg sources are LABELS.gpkg@RASTER.tif")
    try:
        meta, _, wkb, fields = read(labels)
    except Exception as exc:
        raise InputError(f"cannot read {labels}: {first_line(exc)}") from None
    names = dict(zip(meta["fields"], fields)).get("class")
    if names is None:
        raise InputError(f"{labels}: no 'class' field")
    with rasterio.open(raster) as ds:
        inverse = ~ds.transform
        objects = []
        for geom, name in zip(shapely.from_wkb(wkb), names):
            if meta.get("crs") and ds.crs and meta["crs"] != ds.crs.to_string():
                geom = shapely.geometry.shape(transform_geom(meta["crs"], ds.crs, geom.__geo_interface__))
            minx, miny, maxx, maxy = geom.bounds
            cols, rows = np.array([inverse @ (minx, maxy), inverse @ (maxx, miny)]).T
            objects.append(SourceObject(float(cols.min()), float(rows.min()), float(cols.max()), float(rows.max()),
                                        str(name or "")))
        yield SourceImage(f"gpkg:{Path(labels).stem}", Path(raster), objects)


READERS = {"dota": read_dota, "dior": read_voc, "voc": read_voc, "coco": read_coco, "gpkg": read_gpkg}
