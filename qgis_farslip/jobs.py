"""Turning "this layer, this extent, these classes" into an engine job, and running it to files.

Local engine + a raster layer that is a file of a format the engine reads by path (its health lists
them: GeoTIFF, GeoPackage, JPEG 2000, ...): the engine reads the file itself (path + bbox in the
layer's CRS). Anything else (web or database layers, one raster of a container such as a Sentinel-2
product or a NetCDF file, formats the engine does not read for a client, a remote engine): the
extent is rendered by QGIS at the chosen resolution to a temporary GeoTIFF, which is uploaded.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from qgis.core import (QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsCoordinateTransformContext,
                       QgsDistanceArea, QgsPointXY, QgsProject, QgsRasterFileWriter, QgsRasterPipe, QgsRectangle,
                       QgsUnitTypes)

from qgis_farslip.client import EngineClient, EngineError, in_gui_words, is_local_engine
from qgis_farslip.outputs import fresh_folder
from qgis_farslip.raster_snapshot import RasterSnapshot
from qgis_farslip.taught_refs import classes_value, with_taught

def file_of_format(raster: RasterSnapshot, formats: tuple[str, ...] | None) -> str | None:
    """The raster's file if GDAL identifies it as one of `formats` (the engine's `path_formats`; None: an
    engine that does not say, which is sent any file), else None."""
    if raster.file is None or formats is None:
        return raster.file
    from osgeo import gdal

    driver = gdal.IdentifyDriver(raster.file)
    return raster.file if driver is not None and driver.ShortName in formats else None


def to_layer_crs(extent: QgsRectangle, extent_crs: QgsCoordinateReferenceSystem,
                 raster: RasterSnapshot) -> QgsRectangle:
    if not extent_crs.isValid() or not raster.crs.isValid() or extent_crs == raster.crs:
        return QgsRectangle(extent)
    transform = QgsCoordinateTransform(extent_crs, raster.crs, QgsProject.instance())
    return transform.transformBoundingBox(extent)


@dataclass
class SegmentationRequest:
    raster: RasterSnapshot  # of the layer (`RasterSnapshot.of(layer)`, on the main thread)
    classes: list[str]
    extent: QgsRectangle | None = None  # in `extent_crs`; None = whole layer
    extent_crs: QgsCoordinateReferenceSystem = field(default_factory=QgsCoordinateReferenceSystem)
    gsd: float | None = None
    bands: list[int] | None = None  # [r, g, b] of the layer (None: the engine's choice)
    nodata: float | None = None  # None: what the raster declares
    model: str | None = None
    threshold: float | None = None
    scores: bool = False
    min_area: float = 0.0
    mask_wkt: str | None = None  # segment only inside (selected polygons), in `mask_crs`
    mask_crs: str | None = None
    upload: bool = False  # send a rendered copy even when a local engine could read the file
    taught: str | None = None  # taught classes replacing the names: "job:<id>" (a teach job) or a .classes.json path
    #                            (sent to the engine, see taught_refs.py)


def render_to_geotiff(raster: RasterSnapshot, extent: QgsRectangle, resolution: float, folder: str) -> str:
    """Write what QGIS reads for `extent` (layer CRS) at `resolution` (layer units / px) as a GeoTIFF."""
    width = max(1, int(round(extent.width() / resolution)))
    height = max(1, int(round(extent.height() / resolution)))
    if width * height > MAX_RENDER_PIXELS:
        check_render_size(extent, resolution)
    path = os.path.join(folder, "farslip_input.tif")
    pipe = QgsRasterPipe()
    if not pipe.set(raster.provider_copy()):
        raise EngineError(f"cannot read layer {raster.name}")
    writer = QgsRasterFileWriter(path)
    # nothing is reprojected (the layer's own extent and CRS): no transformations are needed
    error = writer.writeRaster(pipe, width, height, extent, raster.crs, QgsCoordinateTransformContext())
    if error != QgsRasterFileWriter.WriterError.NoError:
        raise EngineError(f"cannot write a temporary copy of {raster.name} (error {error})")
    return path


MAX_RENDER_PIXELS = 40_000_000  # what QGIS renders and uploads in one go (about 6300 × 6300 px)
DEFAULT_GSD_M = 0.5  # the engine's default working resolution: no need to render finer


def render_plan(raster: RasterSnapshot, extent: QgsRectangle | None, gsd: float | None) -> tuple[QgsRectangle, float]:
    """(area in the layer CRS, resolution in layer units per pixel) QGIS renders for the engine: the
    working GSD on the ground (`gsd`, else the engine's 0.5 m) — for a file no finer than its own pixels;
    for a web layer (XYZ, WMS: no pixel size of its own) exactly that."""
    area = extent or raster.extent
    native = raster.units_per_pixel
    scale = units_per_ground_metre(raster.crs, area) if raster.crs.isValid() else None
    if scale is None:  # no CRS: pixel space
        return area, native or area.width() / 2048
    wanted = (gsd or DEFAULT_GSD_M) * scale
    return area, max(native, wanted) if native is not None else wanted


def units_per_ground_metre(crs: QgsCoordinateReferenceSystem, area: QgsRectangle) -> float | None:
    """CRS units per metre on the ground (WGS 84 ellipsoid) at the area's centre, along the direction where
    a unit is longest: degrees of latitude per metre on a geographic CRS; 1.64 for Web Mercator at 52° N,
    where XYZ layers' "metres" are that much shorter than the ground's (the engine measures its GSD on
    the ground too); 1 on a metric CRS true to within 0.5 % (UTM, national grids). None when it cannot be
    measured."""
    measure = QgsDistanceArea()
    measure.setSourceCrs(crs, QgsProject.instance().transformContext())
    measure.setEllipsoid("WGS84")
    at = area.center()
    step = max(area.width(), area.height()) / 1000 or 1.0
    across = measure.measureLine(QgsPointXY(at.x() - step / 2, at.y()), QgsPointXY(at.x() + step / 2, at.y()))
    along = measure.measureLine(QgsPointXY(at.x(), at.y() - step / 2), QgsPointXY(at.x(), at.y() + step / 2))
    if not all(g > 0 and math.isfinite(g) for g in (across, along)):
        return None
    scale = step / max(across, along)  # (square degrees are narrower than tall: neither side coarser than asked)
    metric = crs.mapUnits() == QgsUnitTypes.DistanceUnit.DistanceMeters
    return 1.0 if metric and abs(scale - 1.0) <= 0.005 else scale


def render_fitting(raster: RasterSnapshot, area: QgsRectangle, gsd: float | None) -> float | None:
    """A working GSD (m/px) at which QGIS can render `area` (layer CRS) in one go — `gsd` (else the engine's
    default) when that fits, else coarser by steps of 1.5× — or None when the area cannot be measured."""
    wanted = gsd or DEFAULT_GSD_M
    for _ in range(60):
        _, resolution = render_plan(raster, area, wanted)
        if round(area.width() / resolution) * round(area.height() / resolution) <= MAX_RENDER_PIXELS:
            return wanted
        wanted *= 1.5
    return None


def check_render_size(area: QgsRectangle, resolution: float) -> None:
    """Refuse, before anything is rendered, an area that would take QGIS minutes and gigabytes."""
    width, height = int(round(area.width() / resolution)), int(round(area.height() / resolution))
    if width * height > MAX_RENDER_PIXELS:
        raise EngineError(f"the area is {width:,} × {height:,} px at this resolution, more than "
                          f"{MAX_RENDER_PIXELS // 1_000_000} million: zoom in and choose Area → Visible map extent, "
                          "or set a coarser Resolution")


def needs_upload(client_url: str, raster: RasterSnapshot, force_upload: bool) -> bool:
    """Whether a rendered copy is surely sent — the quick check on the UI thread, without asking the engine
    (which may still refuse the file's format: `engine_reads`)."""
    return force_upload or not is_local_engine(client_url) or raster.file is None


def engine_reads(client: EngineClient, raster: RasterSnapshot, force_upload: bool = False) -> str | None:
    """The file of `layer` the engine reads itself (a local engine, a format it reads by path, placed as
    QGIS places it), else None: a rendered copy is sent. Asks the engine (once per client) which formats
    it reads."""
    if force_upload or not is_local_engine(client.url):
        return None
    path = file_of_format(raster, client.path_formats())
    return path if path is not None and placed_as_in_qgis(path, raster) else None


def placed_as_in_qgis(path: str, raster: RasterSnapshot) -> bool:
    """Whether the file's own georeference is what QGIS uses for the layer: not so for a file with a
    geotransform but no CRS (a JPEG or PNG with a world file and no .prj) or another CRS, which the user
    set in QGIS (Layer CRS) — the engine would place the results by the file, so a copy is sent instead."""
    from osgeo import gdal

    if not raster.crs.isValid():
        return True
    dataset = gdal.Open(path)
    if dataset is None or dataset.GetGeoTransform(can_return_null=True) is None:
        return True  # no geotransform (pixel space, GCPs): the engine handles it as QGIS draws it
    # the file's own CRS, as QGIS read it (a custom CRS compares equal too)
    return raster.file_crs.isValid() and raster.file_crs == raster.crs


def clip_extent(raster: RasterSnapshot, extent: QgsRectangle | None,
                extent_crs: QgsCoordinateReferenceSystem) -> QgsRectangle | None:
    if extent is None:
        return None
    extent = to_layer_crs(extent, extent_crs, raster).intersect(raster.extent)
    if extent.isEmpty():
        raise EngineError("the chosen extent does not overlap the layer")
    return extent


def area_payload(client: EngineClient, raster: RasterSnapshot, extent: QgsRectangle | None,
                 extent_crs: QgsCoordinateReferenceSystem, gsd: float | None, scratch: str,
                 force_upload: bool = False, on_stage: Callable[[str], None] | None = None) -> dict:
    """`input` (a path the engine reads, or an upload of a rendered copy: said to `on_stage`) and the
    `bbox` to process."""
    extent = clip_extent(raster, extent, extent_crs)
    path = engine_reads(client, raster, force_upload)
    if path is None and on_stage is not None:
        on_stage("rendering and sending the image…")
    if path is not None:
        payload: dict = {"input": {"path": os.path.abspath(path)}}
        if extent is not None:
            payload["bbox"] = [extent.xMinimum(), extent.yMinimum(), extent.xMaximum(), extent.yMaximum()]
            if raster.crs_text is not None:  # (else the bbox is in the raster's pixel space, as QGIS draws it)
                payload["bbox_crs"] = raster.crs_text
        return payload
    area, resolution = render_plan(raster, extent, gsd)
    check_render_size(area, resolution)
    return {"input": {"upload_id": client.upload(render_to_geotiff(raster, area, resolution, scratch))}}


def check_request(client_url: str, request: "SegmentationRequest") -> None:
    """The quick checks of a request on the UI thread (overlap, render size) before a task starts."""
    extent = clip_extent(request.raster, request.extent, request.extent_crs)
    if needs_upload(client_url, request.raster, request.upload):
        check_render_size(*render_plan(request.raster, extent, request.gsd))


def build_payload(client: EngineClient, request: SegmentationRequest, scratch: str,
                  on_stage: Callable[[str], None] | None = None) -> dict:
    """The JSON body of a segmentation job."""
    payload = area_payload(client, request.raster, request.extent, request.extent_crs, request.gsd, scratch,
                           force_upload=request.upload, on_stage=on_stage)
    try:
        classes = classes_value(client, request.taught) if request.taught else request.classes
    except BaseException:
        forget_upload(client, payload)
        raise
    payload.update(classes=classes, scores=request.scores, min_area=request.min_area)
    for key in ("gsd", "bands", "nodata", "model", "threshold", "mask_wkt", "mask_crs"):
        if getattr(request, key) is not None:
            payload[key] = getattr(request, key)
    return payload


def run_job(client: EngineClient, kind: str, payload: dict, out_folder: str,
            on_progress: Callable[[float, str], None] | None = None,
            is_cancelled: Callable[[], bool] | None = None,
            on_stage: Callable[[str], None] | None = None, fresh: bool = True) -> tuple[dict, Path]:
    """Submit, follow and download an engine job; returns (summary, folder with the files): `out_folder`, a
    run's own (`fresh_folder`: `-2`… beside another run's files), or as it is when not `fresh` (a folder
    the user chose for these files)."""
    stage = on_stage or (lambda text: None)
    if is_cancelled is not None and is_cancelled():
        raise EngineError("cancelled")
    job_id = client.submit(kind, payload)
    status = client.wait(job_id, on_progress, is_cancelled)
    if status["state"] == "cancelled":
        raise EngineError("cancelled")
    if status["state"] != "done":
        raise EngineError(f"engine: {in_gui_words(status['message'])}")
    try:
        folder = fresh_folder(Path(out_folder)) if fresh else Path(out_folder)
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EngineError(f"cannot create the results folder {out_folder} ({exc.strerror}); choose another "
                          "folder under Save to") from None
    stage("downloading the results…")
    for name in status["files"]:
        client.download(job_id, name, folder)
    summary = dict(status["summary"])
    if isinstance(summary.get("files"), dict):
        summary["files"] = {key: name for key, name in summary["files"].items() if (folder / name).exists()}
    summary["job_id"] = job_id  # what a later job names (taught classes, an accuracy check)
    return summary, folder


def forget_upload(client: EngineClient, payload: dict) -> None:
    """The rendered copy a request was sent is deleted on the engine once the request has ended, however it
    ended — done, failed, refused, cancelled (else it stays until it expires, taking from the engine's upload
    quota); an engine that cannot be told is left to expire it. Called after `with_taught`, which may make
    the request once more with the same copy."""
    upload = payload.get("input", {}).get("upload_id")
    if upload:
        try:
            client.delete_upload(upload)
        except EngineError:
            pass


def run_segmentation(client: EngineClient, request: SegmentationRequest, out_folder: str,
                     on_progress: Callable[[float, str], None] | None = None,
                     is_cancelled: Callable[[], bool] | None = None,
                     on_stage: Callable[[str], None] | None = None) -> tuple[dict, Path]:
    with tempfile.TemporaryDirectory(prefix="farslip-qgis-") as scratch:
        payload = build_payload(client, request, scratch, on_stage)
    try:
        return with_taught(client, request.taught, payload, lambda body: run_job(
            client, "segment", body, out_folder, on_progress, is_cancelled, on_stage))
    finally:
        forget_upload(client, payload)
