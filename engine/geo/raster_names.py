"""What a user may name as an input raster, and the file stem its outputs get.

Besides a file on disk, GDAL opens names that are not files: `/vsi…` paths (`/vsizip/a.zip/b.tif`,
`/vsis3/…`) and *subdataset* names, `DRIVER:file:part` — one raster of a container that holds several
(`GPKG:/data/city.gpkg:ortho`, `SENTINEL2_L2A:/data/S2A.SAFE/MTD_MSIL2A.xml:TCI:EPSG_32633`,
`NETCDF:"/data/scene.nc":reflectance`), as `gdalinfo` lists them under *Subdatasets* and as QGIS
names such a layer's source. Only GDAL can tell whether such a name is a raster; whether the file
it names exists is told here.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

# DRIVER: — two or more characters, so that a Windows drive (C:) is never taken for a driver; not a URL
_SUBDATASET = re.compile(r"^([A-Za-z][A-Za-z0-9_]+):(?!//)(.+)$")
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")


def _exists(text: str) -> bool:
    """os.path.exists: False, never an error, for a name the system refuses (too long, ...)."""
    return os.path.exists(text)


@dataclass(frozen=True)
class Subdataset:
    """A subdataset name taken apart: `driver`, its `pieces` (split at ':'), of which `pieces[file]` is
    the container's file; `quoted` when the name quotes the file (NETCDF:"/data/a.nc":var)."""

    driver: str
    pieces: tuple[str, ...]
    file: int
    quoted: bool

    @classmethod
    def parse(cls, text: str) -> "Subdataset | None":
        found = _SUBDATASET.match(text)
        if found is None or _exists(text):
            return None
        rest = found.group(2)
        if rest.startswith('"'):
            file, _, part = rest[1:].partition('"')
            return cls(found.group(1), (file, part.lstrip(":")), 0, True)
        skip = 2 if _WINDOWS_DRIVE.match(rest) else 0  # GPKG:C:\data\a.gpkg:ortho
        pieces = [rest[:skip] + piece if i == 0 else piece for i, piece in enumerate(rest[skip:].split(":"))]
        # the file is the piece that looks like a path (GTIFF_DIR:2:/data/a.tif names it last)
        at = next((i for i, piece in enumerate(pieces) if "/" in piece or "\\" in piece), 0)
        return cls(found.group(1), tuple(pieces), at, False)

    @property
    def path(self) -> str:
        return self.pieces[self.file]

    def with_path(self, path: str) -> str:
        """The same name with another file."""
        if self.quoted:
            return f'{self.driver}:"{path}":{self.pieces[1]}' if self.pieces[1] else f'{self.driver}:"{path}"'
        pieces = list(self.pieces)
        pieces[self.file] = path
        return ":".join([self.driver, *pieces])


def is_gdal_name(text: str) -> bool:
    """Whether `text` is a GDAL name rather than a file path: a `/vsi…` path, or a subdataset name
    (`DRIVER:file:part`) that is not also the name of an existing file."""
    text = str(text)
    return text.startswith("/vsi") or Subdataset.parse(text) is not None


def raster_exists(path: str | Path) -> bool:
    """Whether `path` names a raster there is to open: an existing file, a `/vsi…` path (only GDAL can
    tell), or a subdataset of an existing file (or of a `/vsi…` one)."""
    text = str(path)
    if text.startswith("/vsi"):
        return True
    subdataset = Subdataset.parse(text)
    if subdataset is not None:
        return subdataset.path.startswith("/vsi") or _exists(subdataset.path)
    return _exists(text)


def unreadable_file(path: str | Path) -> str | None:
    """Why the file that a raster name points to cannot be opened for reading, judged before GDAL tries
    (which waits forever on a pipe): a pipe, socket or device rather than a file, or a file this user may
    not read. None when it can be, and for what GDAL judges itself (`/vsi…` names, folders, missing files)."""
    text = str(path)
    subdataset = Subdataset.parse(text)
    file = subdataset.path if subdataset is not None else text
    if file.startswith("/vsi"):
        return None
    try:
        mode = os.stat(file).st_mode
    except (OSError, ValueError):
        return None
    if stat.S_ISDIR(mode):
        return None
    if not stat.S_ISREG(mode):
        return f"{text} is not a file but a pipe, socket or device: save the raster to a file and give that"
    try:
        with open(file, "rb"):
            return None
    except OSError as exc:
        return f"cannot read {text}: {exc.strerror or exc}"


def relative_to(text: str, base: Path) -> str:
    """A name read from a list file: a relative file path (or the relative file of a subdataset name)
    taken relative to the list's folder `base`; absolute paths and `/vsi…` names as written."""
    if text.startswith("/vsi"):
        return text
    subdataset = Subdataset.parse(text)
    if subdataset is not None:
        inner = subdataset.path
        if inner.startswith("/vsi") or Path(inner).is_absolute() or _WINDOWS_DRIVE.match(inner):
            return text
        return subdataset.with_path(str(base / inner))
    return text if Path(text).is_absolute() else str(base / text)


def raster_stem(path: str | Path) -> str:
    """The stem of a raster's output files: the file's name without its suffix; for a subdataset, the
    container's name and the subdataset's part (`GPKG:/data/city.gpkg:ortho` → `city_ortho`,
    `SENTINEL2_L2A:…/MTD_MSIL2A.xml:TCI:EPSG_32633` → `MTD_MSIL2A_TCI_EPSG_32633`)."""
    text = str(path)
    subdataset = Subdataset.parse(text)
    if subdataset is None:
        return Path(text).stem
    words = [w for i, piece in enumerate(subdataset.pieces) if i != subdataset.file
             for w in re.split(r"[^A-Za-z0-9_.-]+", piece) if w]
    return "_".join([Path(subdataset.path).stem or subdataset.driver, *words])
