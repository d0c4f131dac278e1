"""Expanding what a user names on the command line into a list of rasters.

Each argument is a raster path or GDAL name (`/vsis3/...`, a subdataset `GPKG:/data/a.gpkg:ortho`, a
VRT, ...), a glob (`tiles/*.tif`), or a text file listing one of those per line (`.txt`, `.lst`; blank
lines and `#` comments skipped).
Names that do not exist are kept: they are reported as failed inputs, not dropped silently. A file
named twice, however spelled (through a symbolic or a hard link too), is processed once (its first
spelling).
"""

from __future__ import annotations

import glob
import hashlib
from collections import Counter
from pathlib import Path

from engine.errors import InputError
from engine.geo.raster_names import is_gdal_name, raster_stem, relative_to
from engine.text_files import read_text_file

LIST_SUFFIXES = (".txt", ".lst")


def expand_inputs(items: list[str]) -> list[str]:
    """The rasters named by `items`, in order, each once."""
    found: list[str] = []
    for item in items:
        if is_gdal_name(item):
            found.append(item)
        elif Path(item).suffix.lower() in LIST_SUFFIXES and Path(item).is_file():
            found.extend(_read_list(Path(item)))
        elif glob.has_magic(item):
            matches = sorted(glob.glob(item))
            if not matches:
                raise InputError(f"no file matches {item}")
            found.extend(matches)
        else:
            found.append(item)
    if not found:
        raise InputError(f"no rasters to process: {', '.join(items)} lists none")
    unique: dict[object, str] = {}
    for path in found:
        unique.setdefault(_identity(path), path)
    return list(unique.values())


def _identity(path: str):
    """What two names of one file share: the file itself (device and inode: a hard link too), else its
    `source_key`."""
    if not is_gdal_name(path):
        try:
            st = Path(path).stat()
            return st.st_dev, st.st_ino
        except OSError:  # (missing: reported when it is read)
            pass
    return source_key(path)


def source_key(path: str) -> str:
    """One key for every spelling of a local file (relative, absolute, with `..`, through a link), so
    that it is processed once; GDAL names (`/vsi…`, subdatasets) as written."""
    return path if is_gdal_name(path) else str(Path(path).resolve())


def _read_list(path: Path) -> list[str]:
    lines = read_text_file(path, "list of rasters").splitlines()
    base = path.parent
    out = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        named = relative_to(line, base)  # a relative path (or subdataset file): relative to the list
        if not is_gdal_name(named) and glob.has_magic(named):  # a glob, as on the command line
            out.extend(sorted(glob.glob(named)) or [named])  # (matching nothing: reported as a failed input)
        else:
            out.append(named)
    return out


def output_stems(inputs: list[str], reserved: frozenset[str] = frozenset(),
                 claimed: dict[str, str] | None = None) -> list[str]:
    """One output file stem per input: its name, made unique with a short hash where names repeat, are
    `reserved` (the stems of the batch's own files: an input named batch.tif must not write
    batch_summary.json) or are `claimed` by another file ({stem: `source_key` of the input whose outputs
    the folder holds under that stem}: another folder's tile.tif must not replace them)."""
    stems = [raster_stem(p) for p in inputs]
    counts = Counter(stems)
    claimed = claimed or {}

    def taken(stem: str, path: str) -> bool:
        return counts[stem] > 1 or stem in reserved or claimed.get(stem, source_key(path)) != source_key(path)

    # (the hash of the file itself, however its path is spelled: a rerun from another folder names it alike)
    return [f"{s}_{hashlib.sha1(source_key(p).encode()).hexdigest()[:8]}" if taken(s, p) else s
            for s, p in zip(stems, inputs)]


def input_stamp(path: str) -> str:
    """A local file as it is now (size and modification time; '' for a GDAL name): a rerun recomputes an
    input whose file changed instead of keeping its results or blocks."""
    if is_gdal_name(path):
        return ""
    try:
        stat = Path(path).stat()
    except OSError:
        return ""
    return f"{stat.st_size}-{stat.st_mtime_ns}"
