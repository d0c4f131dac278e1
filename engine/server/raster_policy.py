"""Which rasters a client may make the engine open: the folder policy carried through to GDAL.

A path inside an allowed folder (or an upload) is not enough: several GDAL formats are recipes that
read other files or URLs when opened — a VRT names source files (anywhere, or `/vsicurl/` URLs), a
WMS/WMTS XML file names a server. So the service opens client rasters only with the drivers of
self-contained formats (by path also a GeoPackage of one raster: an SQLite database is not taken as
an upload), and a VRT (by path only, never as an upload) only after its XML has been read — before
GDAL sees it — and every source it names has passed the same folder policy as the VRT itself (nested
VRTs likewise). URLs and `/vsi…` paths in a VRT, and GDAL names instead of a path (`/vsi…`, a
subdataset such as `GPKG:file:table`), are refused: the engine makes no request for a client. The
health answer lists the formats read by path (`path_formats`): the plugin sends any other raster as
a GeoTIFF QGIS renders. The command line, run by the user on their own files, opens anything GDAL
opens.

A job runs after its submit check, perhaps minutes later: when it starts, its input is checked again
by the same policy, and the job opens rasters only with the drivers that check allowed
(`engine.geo.opening.only_drivers`) — so a file replaced meanwhile by a recipe of another kind is
refused rather than read. (A VRT's sources are opened by GDAL itself: one replaced between the check
at the start and GDAL opening it, a moment later, is not caught; doing that needs write access to the
served folders.)
"""

from __future__ import annotations

import warnings
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from fastapi import HTTPException

SELF_CONTAINED = ("GTiff", "PNG", "JPEG", "JP2OpenJPEG", "WEBP", "BMP", "GIF", "HFA")  # also as uploads
FORMATS = "GeoTIFF/COG, PNG, JPEG, JPEG 2000, WebP, BMP, GIF or Erdas Imagine"
# by path only (an SQLite database is not taken from a remote client's upload): a GeoPackage of one raster
BY_PATH = SELF_CONTAINED + ("GPKG",)
PATH_FORMATS = BY_PATH + ("VRT",)  # what a client may name by path (a VRT's sources checked)
_MAX_VRT_BYTES = 50 * 1024 * 1024
_MAX_DEPTH = 8


def raster_info(path: Path, drivers: tuple[str, ...] = SELF_CONTAINED) -> dict:
    """Basic facts of a raster that one of `drivers` opens (no other driver is tried), or a 400."""
    import rasterio

    for driver in drivers:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with rasterio.open(path, driver=driver) as ds:
                    if ds.count < 1 and ds.subdatasets:
                        raise HTTPException(400, f"{path.name} holds {len(ds.subdatasets)} rasters (GDAL "
                                                 f"subdatasets), not one: this engine reads a file of one raster; "
                                                 f"save the one to segment on its own (QGIS: Export → Save As), or "
                                                 f"upload it")
                    if ds.width < 1 or ds.height < 1 or ds.count < 1:
                        raise HTTPException(400, "the raster holds no pixels")
                    return {"width": ds.width, "height": ds.height, "count": ds.count,
                            "crs": ds.crs.to_string() if ds.crs else None}
        except rasterio.errors.RasterioError:
            continue
    raise HTTPException(400, f"not a raster this engine serves: {FORMATS} (by path also a GeoPackage of one "
                             f"raster, or a VRT with its sources in the served folders), or a corrupt file")


def check_input(path: Path, settings, allowed_path, depth: int = 0) -> None:
    """A 4xx unless `path` (already inside the folder policy) is a self-contained raster, or a VRT whose
    sources all pass `allowed_path` (the same policy) and are themselves acceptable."""
    if not _is_vrt(path):
        raster_info(path, BY_PATH)
        return
    if depth >= _MAX_DEPTH:
        raise HTTPException(400, f"{path.name}: VRTs nested more than {_MAX_DEPTH} deep")
    for source in _vrt_sources(path):
        if source.startswith("/vsi") or "://" in source:
            raise HTTPException(400, f"{path.name} reads '{source[:200]}': this engine opens no URLs or /vsi "
                                     f"paths for a client")
        target = Path(source)
        try:
            real = allowed_path(str(target), settings, what="VRT source")
        except HTTPException as exc:
            raise HTTPException(exc.status_code, f"{path.name}: {exc.detail}") from None
        check_input(real, settings, allowed_path, depth + 1)
    raster_info(path, PATH_FORMATS)


def drivers_for(path: Path) -> tuple[str, ...]:
    """The drivers a checked input may be opened with: a VRT's (its sources are checked) or the
    self-contained formats'."""
    return PATH_FORMATS if _is_vrt(path) else BY_PATH


def _is_vrt(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(1024)
    return b"<VRTDataset" in head


def _vrt_sources(path: Path) -> list[str]:
    """The files a VRT reads (absolute; relative ones resolved against the VRT's folder)."""
    if path.stat().st_size > _MAX_VRT_BYTES:
        raise HTTPException(400, f"{path.name}: a VRT larger than {_MAX_VRT_BYTES // 2**20} MB")
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError as exc:
        raise HTTPException(400, f"{path.name} is not a valid VRT: {exc}") from None
    sources = []
    for element in root.iter():
        if element.tag not in ("SourceFilename", "SourceDataset"):
            continue
        name = (element.text or "").strip()
        if element.get("relativeToVRT") == "1" or element.get("relativetoVRT") == "1":
            name = str(path.parent / name)
        sources.append(name)
    if any(e.tag == "PixelFunctionCode" for e in root.iter()):
        raise HTTPException(400, f"{path.name}: a VRT with code in it")
    if not sources and any(e.tag not in _PLAIN_TAGS for e in root.iter()):
        raise HTTPException(400, f"{path.name}: a VRT of a kind this engine does not open")
    return sources


# Elements of a VRT that read nothing by themselves (a VRT without sources may only hold these).
_PLAIN_TAGS = {"VRTDataset", "SRS", "GeoTransform", "Metadata", "MDI", "VRTRasterBand", "ColorInterp",
               "NoDataValue", "Description", "OverviewList", "BlockXSize", "BlockYSize"}
