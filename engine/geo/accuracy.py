"""Accuracy of a class raster against the user's own reference polygons.

    report = check_accuracy("out/ortho_classes.tif", "reference.gpkg", "class", "out/accuracy/")

The reference polygons (in their CRS, or the raster's when they have none) are burnt onto the class
raster's own grid, window by window; each polygon's label is matched to the raster's classes by name
or synonym (case-insensitive; the raster's `FARSLIP_CLASSES` tag lists them). The confusion matrix
counts every labelled pixel: rows the reference class, columns the class the raster gives it (plus
"no class" for nodata / below-threshold pixels). From it: per-class IoU, precision and recall, their
means, overall accuracy and Cohen's kappa — written as `accuracy.json`, `confusion.csv` and
`confusion.png` (row-normalised, numbers in the cells).
"""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.features import rasterize
from rasterio.windows import Window

from engine.dense.prompts import name_key
from engine.errors import InputError
from engine.geo.crs_text import parse_crs
from engine.geo.opening import open_raster
from engine.geo.sensor_model import SensorModel
from engine.geo.source import PIXEL_SPACE
from engine.geo.vectors import read_labels
from engine.geo.workdirs import moving, publish_together, work_folder

ROWS_PER_WINDOW = 1024


def raster_classes(dataset) -> list[dict]:
    """The classes a FarSLIP class raster holds (index, name, synonyms), from its tags."""
    try:
        classes = json.loads(dataset.tags().get("FARSLIP_CLASSES", ""))
        return [{"index": int(c["index"]), "name": str(c["name"]), "synonyms": list(c.get("synonyms", []))}
                for c in classes]
    except (ValueError, KeyError, TypeError):
        raise InputError(f"{Path(dataset.name).name} is not a FarSLIP class raster (no FARSLIP_CLASSES tag)") from None


def _match(label: str, classes: list[dict]) -> int | None:
    key = name_key(label)
    for c in classes:
        if key in (name_key(n) for n in [c["name"], *c["synonyms"]]):
            return c["index"]
    return None


def _open_class_raster(class_raster: str):
    with warnings.catch_warnings():  # a class map without geotransform is read in its pixel frame: no warning
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        return open_raster(class_raster)


def _reference_on(ds, geoms: list, values: list[str], crs: str | None) -> tuple[list[dict], Affine, list, dict]:
    """(the class raster's classes, its pixel → frame transform, the reference shapes in that frame as
    (polygon, the class's row), the labels left out with their counts). An InputError when no polygon
    names a class of the raster."""
    classes = raster_classes(ds)
    position = {c["index"]: i for i, c in enumerate(classes)}
    shapes, skipped = [], {}
    for geom, value in zip(geoms, values):
        index = _match(value, classes) if value else None
        if index is None or geom is None or geom.is_empty:
            skipped[value or "(empty)"] = skipped.get(value or "(empty)", 0) + 1
            continue
        if geom.geom_type not in ("Polygon", "MultiPolygon"):  # a point or line is no reference area
            why = f"{value} (a {geom.geom_type.lower()}, not a polygon)"
            skipped[why] = skipped.get(why, 0) + 1
            continue
        shapes.append((geom, position[index]))
    if not shapes:
        raise InputError(f"no reference polygon names a class of {Path(ds.name).name} "
                         f"({', '.join(c['name'] for c in classes)})")
    frame, shapes = _in_raster_frame(ds, shapes, crs)
    return classes, frame, shapes, skipped


def _meet(bounds: tuple, window: Window, frame: Affine) -> bool:
    """Whether shapes' bounds (minx, miny, maxx, maxy) reach a window of the raster (False only when
    they surely miss it)."""
    left, bottom, right, top = rasterio.windows.bounds(window, frame)
    return not (bounds[2] < min(left, right) or bounds[0] > max(left, right) or
                bounds[3] < min(bottom, top) or bounds[1] > max(bottom, top))


def check_reference(class_raster: str, geoms: list, values: list[str], crs: str | None,
                    about: dict | None = None) -> None:
    """Refuse, before any pixel is read, reference polygons of which none names a class of the class
    raster or none reaches its extent (what the API checks before it accepts an accuracy job)."""
    import shapely

    with _open_class_raster(class_raster) as ds:
        _, frame, shapes, _ = _reference_on(ds, geoms, values, crs)
        bounds = shapely.GeometryCollection([g for g, _ in shapes]).bounds
        if not _meet(bounds, Window(0, 0, ds.width, ds.height), frame):
            raise InputError(_overlaps_nothing(class_raster, crs, about))


def _overlaps_nothing(class_raster: str, crs: str | None, about: dict | None, conflicting: int = 0) -> str:
    geojson = str((about or {}).get("reference", "")).lower().endswith((".geojson", ".json"))
    hint = "; a GeoJSON without a CRS is read as WGS 84 longitude, latitude" if geojson else ""
    return (f"no reference polygon overlaps {(about or {}).get('class_raster', Path(class_raster).name)}"
            + (f" (reference in {crs}{hint})" if crs else "")
            + (f"; {conflicting} pixels are claimed by reference polygons of different classes"
               if conflicting else ""))


def confusion_matrix(class_raster: str, geoms: list, values: list[str], crs: str | None
                     ) -> tuple[np.ndarray, list[dict], dict, int]:
    """([K, K+1] pixel counts: reference class × predicted class or 'no class' last), the classes, the
    reference labels that named no class (with their polygon counts), and the pixels left out because
    reference polygons of different classes overlap there. The reference polygons are `geoms`
    labelled `values`, in `crs` (None: the raster's)."""
    import shapely

    with _open_class_raster(class_raster) as ds:
        classes, frame, shapes, skipped = _reference_on(ds, geoms, values, crs)
        k = len(classes)
        matrix = np.zeros((k, k + 1), dtype=np.int64)
        lookup = np.full(256, k, dtype=np.int64)  # a raster value → its column; NODATA and unknown: 'no class'
        for i, c in enumerate(classes):
            lookup[c["index"]] = i
        bounds = shapely.GeometryCollection([g for g, _ in shapes]).bounds
        conflicting = 0
        for row in range(0, ds.height, ROWS_PER_WINDOW):
            window = Window(0, row, ds.width, min(ROWS_PER_WINDOW, ds.height - row))
            if not _meet(bounds, window, frame):
                continue
            shape, place = (int(window.height), ds.width), frame @ Affine.translation(0, row)
            truth = rasterize(shapes, out_shape=shape, fill=255, dtype="uint8", transform=place)
            labelled = truth != 255
            if not labelled.any():
                continue
            disputed = _claimed_by_several_classes(shapes, shape, place)
            if disputed is not None:  # the last polygon drawn would win there: left out, counted
                conflicting += int((disputed & labelled).sum())
                labelled &= ~disputed
            predicted = lookup[ds.read(1, window=window)[labelled]]
            np.add.at(matrix, (truth[labelled].astype(np.int64), predicted), 1)
    return matrix, classes, skipped, conflicting


def _in_raster_frame(ds, shapes: list, crs: str | None) -> tuple[Affine, list]:
    """(the class raster's pixel → frame transform, the reference shapes in that frame). A geotransform's
    frame is its CRS (references in another `crs` reprojected). A class map without one — of a plain PNG
    tile, or placed by ground control points — is in the frame `segment` gives its polygons and QGIS
    draws it in (x = column, y = −row): references without a CRS are taken in it, references with one
    are brought into it through the raster's GCPs."""
    import shapely
    from pyproj import CRS, Transformer

    given = parse_crs(crs, "the reference's CRS") if crs is not None else None
    if ds.transform != Affine.identity():
        if given is not None and ds.crs is not None and given != CRS.from_wkt(ds.crs.to_wkt()):
            move = Transformer.from_crs(given, CRS.from_wkt(ds.crs.to_wkt()), always_xy=True).transform
            shapes = [(shapely.transform(g, move, interleaved=False), k) for g, k in shapes]
        return ds.transform, shapes
    model = SensorModel.of(ds, ds.transform)
    if given is not None and model is not None and model.gcps:
        from rasterio.transform import GCPTransformer

        points, gcp_crs = model.gcps
        to_gcps = (Transformer.from_crs(given, CRS.from_wkt(gcp_crs.to_wkt()), always_xy=True).transform
                   if gcp_crs is not None and given != CRS.from_wkt(gcp_crs.to_wkt()) else None)
        placing = GCPTransformer(points)

        def to_frame(xs, ys):
            if to_gcps is not None:
                xs, ys = to_gcps(xs, ys)
            rows, cols = placing.rowcol(np.asarray(xs), np.asarray(ys), op=lambda v: v)
            return np.asarray(cols, dtype=np.float64), -np.asarray(rows, dtype=np.float64)

        shapes = [(shapely.transform(g, to_frame, interleaved=False), k) for g, k in shapes]
    return PIXEL_SPACE, shapes


def _claimed_by_several_classes(shapes: list, shape: tuple[int, int], place) -> np.ndarray | None:
    """Pixels inside reference polygons of two or more classes (None when no polygons overlap at all)."""
    from rasterio.enums import MergeAlg

    count = rasterize(((g, 1) for g, _ in shapes), out_shape=shape, fill=0, dtype="uint16", transform=place,
                      merge_alg=MergeAlg.add)
    if not (count > 1).any():
        return None
    classes = np.zeros(shape, dtype=np.uint16)
    for k in sorted({k for _, k in shapes}):
        classes += rasterize([g for g, c in shapes if c == k], out_shape=shape, fill=0, default_value=1,
                             dtype="uint8", transform=place)
    return classes > 1


def scores(matrix: np.ndarray, classes: list[dict]) -> dict:
    """IoU, precision, recall per class (over the classes the reference holds), their means, overall
    accuracy and Cohen's kappa, from a [K, K+1] confusion matrix."""
    k = len(classes)
    square = matrix[:, :k]
    total = int(matrix.sum())
    tp = np.diag(square).astype(float)
    reference = matrix.sum(axis=1).astype(float)  # every labelled pixel of the class, whatever it got
    predicted = square.sum(axis=0).astype(float)  # labelled pixels the raster gave the class
    per_class = {}
    for i, c in enumerate(classes):
        if reference[i] == 0:
            continue
        union = reference[i] + predicted[i] - tp[i]
        per_class[c["name"]] = {
            "iou": round(tp[i] / union, 4) if union else 0.0,
            "precision": round(tp[i] / predicted[i], 4) if predicted[i] else 0.0,
            "recall": round(tp[i] / reference[i], 4),
            "reference_pixels": int(reference[i]), "predicted_pixels": int(predicted[i]),
            "correct_pixels": int(tp[i]),
        }
    observed = tp.sum() / total if total else 0.0
    expected = float((reference * predicted).sum()) / total**2 if total else 0.0  # agreement by chance
    present = list(per_class.values())
    return {
        "miou": round(float(np.mean([v["iou"] for v in present])), 4),
        "mean_precision": round(float(np.mean([v["precision"] for v in present])), 4),
        "mean_recall": round(float(np.mean([v["recall"] for v in present])), 4),
        "overall_accuracy": round(float(observed), 4),
        "kappa": round((observed - expected) / (1 - expected), 4) if expected < 1 else 0.0,
        "labelled_pixels": total, "no_class_pixels": int(matrix[:, k].sum()),
        "per_class": per_class,
    }


def write_confusion_png(matrix: np.ndarray, names: list[str], path: Path) -> None:
    """Row-normalised confusion matrix as an image: reference down, prediction across, the share of each
    reference class in its cell (darker = more), diagonal outlined."""
    from PIL import Image, ImageDraw

    cell, margin = 56, 150
    k = matrix.shape[0]
    columns = [*names, "no class"]
    rows = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    image = Image.new("RGB", (margin + cell * len(columns) + 10, margin + cell * k + 30), "white")
    draw = ImageDraw.Draw(image)
    draw.text((margin, 8), "predicted class →", fill="black")
    draw.text((8, margin - 20), "reference ↓", fill="black")
    for j, name in enumerate(columns):
        label = Image.new("RGB", (margin - 30, 14), "white")
        ImageDraw.Draw(label).text((0, 0), name[:22], fill="black")
        image.paste(label.rotate(90, expand=True), (margin + j * cell + cell // 2 - 7, 28))
    for i in range(k):
        draw.text((8, margin + i * cell + cell // 2 - 6), names[i][:22], fill="black")
        for j in range(len(columns)):
            share = float(rows[i, j])
            shade = int(255 - 200 * share)
            box = [margin + j * cell, margin + i * cell, margin + (j + 1) * cell - 1, margin + (i + 1) * cell - 1]
            draw.rectangle(box, fill=(shade, shade, 255), outline="black" if i == j else (200, 200, 200),
                           width=3 if i == j else 1)
            draw.text((box[0] + 8, box[1] + cell // 2 - 6), f"{share:.0%}", fill="white" if share > 0.6 else "black")
    image.save(path)


def check_accuracy(class_raster: str, reference: str, field: str, out_dir: str) -> dict:
    """`write_accuracy` for the polygons of a vector file and its `field`."""
    geoms, values, crs = read_labels(reference, field)
    return write_accuracy(class_raster, geoms, values, crs, out_dir,
                          {"reference": str(reference), "field": field})


def write_accuracy(class_raster: str, geoms: list, values: list[str], crs: str | None, out_dir: str,
                   about: dict | None = None) -> dict:
    """Write accuracy.json, confusion.csv and confusion.png into `out_dir`; returns the report."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file: name a folder for accuracy.json, confusion.csv and confusion.png")
    matrix, classes, skipped, conflicting = confusion_matrix(class_raster, geoms, values, crs)
    if not matrix.sum():
        raise InputError(_overlaps_nothing(class_raster, crs, about, conflicting))
    report = {"class_raster": str(class_raster), **(about or {}), **scores(matrix, classes),
              "skipped_labels": skipped, "conflicting_pixels": conflicting}
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot write to {out}: {exc.strerror or exc}") from None
    names = [c["name"] for c in classes]
    files = ("accuracy.json", "confusion.csv", "confusion.png")
    with work_folder(out) as work:  # all three or none (a full disk: one line, nothing half-written)
        (work / "accuracy.json").write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
        with open(work / "confusion.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["reference \\ predicted", *names, "no class"])
            for name, row in zip(names, matrix):
                writer.writerow([name, *map(int, row)])
        write_confusion_png(matrix, names, work / "confusion.png")
        publish_together(work, [moving(work / name, out / name) for name in files])
    return report
