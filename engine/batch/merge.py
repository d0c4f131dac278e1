"""Run-level products of a batch: a VRT mosaic of the class rasters and one merged polygon GeoPackage.

Inputs are grouped by CRS (a run may mix CRSs and resolutions): one VRT per CRS (at the finest
resolution of its north-up rasters; class rasters keep their own files, the VRT only points at them;
rotated and south-up rasters are left out of it, their polygons are merged all the same) and one
GeoPackage layer per CRS, each polygon tagged with the input it came from. One CRS gives
`mosaic_classes.vrt` and layer `polygons`; several give `mosaic_classes_<CRS>.vrt` and
`polygons_<CRS>` — `<CRS>` the authority code (`EPSG_32633`; one CRS however it is spelled), or for a
CRS without one (a local grid, an ESRI .prj) `CRS_` and a short hash of its WKT. Inputs without a CRS
(pixel space, GCPs only) have no place in a mosaic; their polygons go to layer `polygons_pixel_space`,
each in its own input's pixel frame (`source` says which). Both files are written under temporary
names and renamed when complete; those of an earlier run into the same folder that this run does not
make are removed.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio

from engine.geo.rasters import NODATA
from engine.geo.vectors import write_wkb

MOSAIC = "mosaic_classes"
MERGED_POLYGONS = "merged_polygons.gpkg"


@dataclass
class Product:
    """One finished input's outputs."""

    name: str
    classes: Path
    polygons: Path | None


PIXEL_SPACE = "pixel_space"  # the group of inputs without a CRS: polygons only, no mosaic


def _crs_key(crs) -> str:
    """A short name for a CRS, the same however it is spelled: its authority code, else a hash of its WKT."""
    if not crs:
        return PIXEL_SPACE
    authority = crs.to_authority()
    if authority is not None:
        return f"{authority[0]}:{authority[1]}"
    import hashlib

    return f"CRS_{hashlib.sha1(crs.to_wkt().encode()).hexdigest()[:8]}"


def _group(products: list[Product]) -> dict[str, list[tuple[Product, rasterio.DatasetReader]]]:
    groups: dict[str, list] = {}
    for p in products:
        ds = rasterio.open(p.classes)
        groups.setdefault(_crs_key(ds.crs), []).append((p, ds))
    return groups


def _north_up(transform) -> bool:
    return transform.b == 0 and transform.d == 0 and transform.a > 0 and transform.e < 0


def _suffix(key: str, several: bool) -> str:
    return "_" + re.sub(r"[^A-Za-z0-9]+", "_", key).strip("_") if several else ""


def write_merged(out_dir: Path, products: list[Product]) -> list[Path]:
    """Write the mosaics and the merged GeoPackage, and remove those of an earlier run that this one
    does not make (polygons after `--no-polygons`, the mosaic of a CRS no longer among the inputs);
    returns the files written."""
    groups = _group(products)
    written = []
    try:
        several = len(groups) > 1 or PIXEL_SPACE in groups
        mosaics = len([key for key in groups if key != PIXEL_SPACE]) > 1
        gpkg_partial = out_dir / f".{Path(MERGED_POLYGONS).stem}.partial.gpkg"
        gpkg_partial.unlink(missing_ok=True)
        any_layer = False
        for key, members in groups.items():
            vrt = out_dir / f"{MOSAIC}{_suffix(key, mosaics)}.vrt"
            north_up = [(p, ds) for p, ds in members if _north_up(ds.transform)]
            if north_up and key != PIXEL_SPACE:  # a VRT places sources by offset: rotated, south-up stay out
                _write_vrt(vrt, north_up)
                written.append(vrt)
            layer = f"polygons{_suffix(key, several)}"
            for p, ds in members:
                if p.polygons is not None and p.polygons.exists():
                    _append_polygons(gpkg_partial, layer, p, ds.crs, any_layer)
                    any_layer = True
        if any_layer:
            os.replace(gpkg_partial, out_dir / MERGED_POLYGONS)
            written.append(out_dir / MERGED_POLYGONS)
    finally:
        for members in groups.values():
            for _, ds in members:
                ds.close()
    for earlier in [*out_dir.glob(f"{MOSAIC}*.vrt"), out_dir / MERGED_POLYGONS]:
        if earlier not in written:
            earlier.unlink(missing_ok=True)
    return written


MERGE_CHUNK = 50_000  # features read and written at a time: memory stays bounded however large an input


def _append_polygons(path: Path, layer: str, product: Product, crs, append: bool) -> None:
    """Append an input's polygons to `layer`, tagged with the input's name, a chunk at a time, their
    geometries passed on as read (WKB)."""
    import pyogrio
    from pyogrio.raw import read

    if append:
        append = layer in [name for name, _ in pyogrio.list_layers(path)]
    total = pyogrio.read_info(str(product.polygons))["features"]
    for start in range(0, max(total, 1), MERGE_CHUNK):
        meta, _, wkb, columns = read(str(product.polygons), skip_features=start, max_features=MERGE_CHUNK)
        fields = {"source": np.full(len(wkb), product.name, dtype=object), **dict(zip(meta["fields"], columns))}
        write_wkb(path, wkb if len(wkb) else np.array([], dtype=object), fields, crs, layer, append=append)
        append = True


def _write_vrt(path: Path, members: list) -> None:
    first = members[0][1]
    res_x = min(abs(ds.transform.a) for _, ds in members)
    res_y = min(abs(ds.transform.e) for _, ds in members)
    left = min(ds.bounds.left for _, ds in members)
    top = max(ds.bounds.top for _, ds in members)
    right = max(ds.bounds.right for _, ds in members)
    bottom = min(ds.bounds.bottom for _, ds in members)
    width, height = max(1, round((right - left) / res_x)), max(1, round((top - bottom) / res_y))
    root = ET.Element("VRTDataset", rasterXSize=str(width), rasterYSize=str(height))
    ET.SubElement(root, "SRS").text = first.crs.to_wkt()
    ET.SubElement(root, "GeoTransform").text = ", ".join(repr(float(v)) for v in (left, res_x, 0, top, 0, -res_y))
    band = ET.SubElement(root, "VRTRasterBand", dataType="Byte", band="1")
    ET.SubElement(band, "NoDataValue").text = str(NODATA)
    try:
        colours = first.colormap(1)
        ET.SubElement(band, "ColorInterp").text = "Palette"
        table = ET.SubElement(band, "ColorTable")
        for index in range(256):
            r, g, b, a = colours.get(index, (0, 0, 0, 0))
            ET.SubElement(table, "Entry", c1=str(r), c2=str(g), c3=str(b), c4=str(a))
    except ValueError:
        pass
    for product, ds in members:
        src = ET.SubElement(band, "ComplexSource")
        ET.SubElement(src, "SourceFilename", relativeToVRT="1").text = os.path.relpath(product.classes, path.parent)
        ET.SubElement(src, "SourceBand").text = "1"
        ET.SubElement(src, "SrcRect", xOff="0", yOff="0", xSize=str(ds.width), ySize=str(ds.height))
        ET.SubElement(src, "DstRect", xOff=repr((ds.bounds.left - left) / res_x),
                      yOff=repr((top - ds.bounds.top) / res_y),
                      xSize=repr(ds.width * abs(ds.transform.a) / res_x),
                      ySize=repr(ds.height * abs(ds.transform.e) / res_y))
        ET.SubElement(src, "NODATA").text = str(NODATA)
    partial = path.with_name(f".{path.name}.partial")
    ET.ElementTree(root).write(partial, encoding="unicode")
    os.replace(partial, path)
