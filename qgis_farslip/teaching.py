"""Teaching classes from labelled polygons and checking a segmentation against reference polygons, as
engine jobs (`POST /v1/jobs/teach`, `POST /v1/jobs/accuracy`): the polygons of a QGIS layer with a class
field become WKT + label, the taught classes come back as `result.classes.json` (used by a segmentation
job as `"classes": "@job:<id>"`), the check as accuracy.json, confusion.csv and confusion.png."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from qgis.PyQt.QtCore import QVariant

from qgis_farslip.client import EngineClient, EngineError
from qgis_farslip.jobs import area_payload, forget_upload, run_job
from qgis_farslip.raster_snapshot import RasterSnapshot

TAUGHT_FILE = "result.classes.json"
ACCURACY_FILES = ("accuracy.json", "confusion.csv", "confusion.png")
FORGOTTEN_SEGMENTATION = ("the engine no longer has the last segmentation (it was restarted, or it expired): "
                          "press Segment again, then check accuracy")


def labelled_polygons(layer, field: str, what: str = "labels", features=None) -> list[dict]:
    """[{"wkt", "label"}] of the polygons of `layer` (a vector layer or a Processing feature source; or just
    its `features`) whose `field` is filled."""
    if layer is None:
        raise EngineError(f"choose a polygon layer for the {what}")
    name = layer.name() if hasattr(layer, "name") else layer.sourceName()
    if not field or layer.fields().indexOf(field) < 0:
        raise EngineError(f"the layer {name} has no field '{field}': choose the field that holds the class")
    items = []
    for feature in features if features is not None else layer.getFeatures():
        geometry, value = feature.geometry(), feature[field]
        if geometry is None or geometry.isEmpty() or _missing(value) or not str(value).strip():
            continue
        items.append({"wkt": linear_wkt(geometry), "label": str(value).strip()})
    if not items:
        raise EngineError(f"the layer {name} has no polygons with a class in '{field}'")
    return items


def _missing(value) -> bool:
    """Whether an attribute value is NULL: a null QVariant on Qt 5 QGIS, None on Qt 6 — not the text "NULL"
    (a class may be called so; its str() is the same)."""
    return value is None or (isinstance(value, QVariant) and value.isNull())


def linear_wkt(geometry) -> str:
    """WKT of a geometry with straight segments only: a MultiSurface or CurvePolygon (WFS and GML parcel
    layers) as the MultiPolygon or Polygon the engine reads (it reads no curves)."""
    from qgis.core import QgsGeometry, QgsWkbTypes

    if QgsWkbTypes.isCurvedType(geometry.wkbType()):  # (a MultiSurface of straight polygons too)
        geometry = QgsGeometry(geometry.constGet().segmentize())
    return geometry.asWkt()


@dataclass
class TeachRequest:
    raster: RasterSnapshot  # of the layer (`RasterSnapshot.of(layer)`, on the main thread)
    classes: list[str]
    labels: list[dict]  # {"wkt", "label"}
    labels_crs: str | None  # None: the raster's
    gsd: float | None = None
    model: str | None = None
    upload: bool = False
    bands: list[int] | None = None  # as the segmentation's (the Segment tab's Bands)
    nodata: float | None = None


@dataclass
class Taught:
    """Classes taught from labels: what a run names (their file, else `@job:<job_id>`) and what the dock shows."""
    job_id: str
    classes: list[str]
    polygons: int  # polygons that taught a class
    sent: int  # polygons sent
    alpha: float
    taught: list[str]
    path: Path | None = None  # the downloaded result.classes.json, or the file chosen
    model: str = ""  # the model they were made with, when read from a file

    def describe(self) -> str:
        skipped = self.sent - self.polygons
        more = f", {skipped} named no class" if skipped > 0 else ""
        return f"classes taught from {self.polygons} polygons (α {self.alpha:.1f}{more})"

    def reference(self) -> str:
        """What a run names after '@': the file (sent to the engine, whichever computer it runs on), else
        the engine's teach job."""
        if self.path is not None and self.path.is_file():
            return str(self.path.resolve())
        if self.job_id:
            return f"job:{self.job_id}"
        raise EngineError(f"{self.path.name if self.path else 'the taught classes'} is gone from its folder: "
                          "choose another beside Taught, or press Clear beside them")


def run_teach(client: EngineClient, request: TeachRequest, out_folder: str,
              on_progress: Callable[[float, str], None] | None = None,
              is_cancelled: Callable[[], bool] | None = None,
              on_stage: Callable[[str], None] | None = None) -> Taught:
    """Submit a teach job on the whole raster, follow it, download `result.classes.json` into `out_folder`."""
    with tempfile.TemporaryDirectory(prefix="farslip-teach-") as scratch:
        payload = area_payload(client, request.raster, None, request.raster.crs, request.gsd, scratch,
                               force_upload=request.upload, on_stage=on_stage)
    payload.update(classes=request.classes, labels=request.labels)
    for key in ("labels_crs", "gsd", "model", "bands", "nodata"):
        if getattr(request, key) is not None:
            payload[key] = getattr(request, key)
    try:
        summary, folder = run_job(client, "teach", payload, out_folder, on_progress, is_cancelled, on_stage)
    finally:
        forget_upload(client, payload)
    per_class = summary.get("polygons") if isinstance(summary.get("polygons"), dict) else {}
    path = folder / TAUGHT_FILE
    return Taught(job_id=summary["job_id"], classes=list(request.classes), polygons=sum(per_class.values()),
                  sent=len(request.labels), alpha=float(summary.get("alpha", 0.0)),
                  taught=list(summary.get("taught", [])), path=path if path.exists() else None)


def run_accuracy(client: EngineClient, segment_job: str, reference: list[dict], reference_crs: str | None,
                 out_folder: str,
                 on_progress: Callable[[float, str], None] | None = None,
                 is_cancelled: Callable[[], bool] | None = None,
                 on_stage: Callable[[str], None] | None = None, fresh: bool = True) -> tuple[dict, Path]:
    """The accuracy report (mIoU, OA, kappa, per class) of a finished segmentation job, and its folder
    (`run_job`'s `fresh`)."""
    payload = {"job": segment_job, "reference": reference}
    if reference_crs is not None:
        payload["reference_crs"] = reference_crs
    try:
        return run_job(client, "accuracy", payload, out_folder, on_progress, is_cancelled, on_stage, fresh)
    except EngineError as exc:
        if "no segmentation job" in str(exc):
            raise EngineError(FORGOTTEN_SEGMENTATION) from None
        raise


def report_rows(report: dict) -> list[tuple[str, str, str, str]]:
    """(class, IoU, precision, recall) rows of a report, as the dock's table shows them."""
    return [(name, f"{v['iou']:.2f}", f"{v['precision']:.2f}", f"{v['recall']:.2f}")
            for name, v in report.get("per_class", {}).items()]


def report_headline(report: dict) -> str:
    return (f"mIoU {report['miou']:.2f} · overall accuracy {report['overall_accuracy']:.1%} · "
            f"kappa {report['kappa']:.2f}")
