"""What a user may name as an input raster, and the file stem its outputs get.

Besides a file on disk, GDAL opens names that are not files: `/vsi…` paths (`/vsizip/a.zip/b.tif`,
`/vsis3/…`) and *subdataset* names, `DRIVER:file:part` — one raster of a container that holds several
(`GPKG:/data/city.gpkg:ortho`, `SENTINEL2_L2A:/data/S2A.SAFE/MTD_MSIL2A.xml:TCI:EPSG_32633`,
`NETCDF:"/data/scene.nc":reflectance`), as `gdalinfo` lists them under *Subdatasets* and as QGIS
names such a layer's source. Only GDAL can tell whether such a name exists.
"""

from __future__ import annotations

import re
from pathlib import Path

# DRIVER: — two or more characters, so that a Windows drive (C:) is never taken for a driver; not a URL
_SUBDATASET = re.compile(r"^([A-Za-z][A-Za-z0-9_]+):(?!//)(.+)$")
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")


def is_gdal_name(text: str) -> bool:
    """Whether `text` is a GDAL name rather than a file path: a `/vsi…` path, or a subdataset name
    (`DRIVER:file:part`) that is not also the name of an existing file."""
    text = str(text)
    return text.startswith("/vsi") or (_SUBDATASET.match(text) is not None and not Path(text).exists())


def raster_exists(path: str | Path) -> bool:
    """Whether `path` names a raster there is to open: an existing file, or a GDAL name (`is_gdal_name`:
    only GDAL can tell)."""
    return is_gdal_name(str(path)) or Path(str(path)).exists()


def raster_stem(path: str | Path) -> str:
    """The stem of a raster's output files: the file's name without its suffix; for a subdataset, the
    container's name and the subdataset's part (`GPKG:/data/city.gpkg:ortho` → `city_ortho`,
    `SENTINEL2_L2A:…/MTD_MSIL2A.xml:TCI:EPSG_32633` → `MTD_MSIL2A_TCI_EPSG_32633`)."""
    text = str(path)
    found = _SUBDATASET.match(text)
    if found is None or not is_gdal_name(text):
        return Path(text).stem
    rest = found.group(2)
    if rest.startswith('"'):  # NETCDF:"/data/scene.nc":var — the file quoted
        file, _, part = rest[1:].partition('"')
        pieces, at = [file, part], 0
    else:  # the file is the piece that looks like a path (GTIFF_DIR:2:/data/a.tif names it last)
        skip = 2 if _WINDOWS_DRIVE.match(rest) else 0
        pieces = [rest[:skip] + piece if i == 0 else piece for i, piece in enumerate(rest[skip:].split(":"))]
        at = next((i for i, piece in enumerate(pieces) if "/" in piece or "\\" in piece), 0)
    words = [w for i, piece in enumerate(pieces) if i != at for w in re.split(r"[^A-Za-z0-9_.-]+", piece) if w]
    return "_".join([Path(pieces[at]).stem or found.group(1), *words])
