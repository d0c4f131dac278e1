"""The one reader of a CRS a user gives as text (a bbox's, a mask's, labels', reference polygons', regions').

    crs = parse_crs("EPSG:32633", "--bbox-crs")     # a pyproj CRS, or an InputError naming the field

Only three forms are read, each with PROJ's own parser for that form, never GDAL's or PROJ's "any user
input" (which fetch URLs, open files and read `+init=` files):
  - an authority code: `EPSG:32633`, `ESRI:102100`, `IGNF:LAMB93`, `OGC:CRS84`, `EPSG:4326+5773` (a
    horizontal and a vertical CRS), `urn:ogc:def:crs:EPSG::32633` (PROJ's database);
  - a WKT (WKT1 or WKT2): `PROJCS[...]`, `PROJCRS[...]`, ... as QGIS sends a custom CRS;
  - a PROJ string: `+proj=utm +zone=33 +datum=WGS84`.
Anything else is refused: a URL, a file name, `@file`, PROJJSON. A grid or init file named inside a
WKT or PROJ string (`+nadgrids=/path`, `+init=`, `PARAMETERFILE["...", "/path"]`) is refused too: only
grids by bare name (PROJ's own data folder) are taken. So a client can neither make the engine read a
file nor send a request through a CRS. `forbid_network()` also turns PROJ's network access off.
"""

from __future__ import annotations

import os
import re

from engine.errors import InputError

_CODE = r"[A-Za-z0-9_.\-]{1,64}"
_AUTHORITY = re.compile(rf"([A-Za-z][A-Za-z0-9_]{{0,31}}):({_CODE})(?:\+({_CODE}))?")  # EPSG:4326+5773: compound
_URN = re.compile(rf"urn:ogc:def:crs:([A-Za-z][A-Za-z0-9_]{{0,31}}):[0-9.]*:({_CODE})", re.IGNORECASE)
_WKT = re.compile(r"[A-Za-z][A-Za-z0-9_]*\s*[\[(]")
_PROJ_TOKEN = re.compile(r"\+?([A-Za-z_][A-Za-z0-9_]*)(?:=(\S*))?")
_WKT_FILES = re.compile(r"\b(PARAMETERFILE|EXTENSION)\s*[\[(]\s*\"[^\"]*\"\s*,\s*\"([^\"]*)\"", re.IGNORECASE)
_FILE_KEYS = {"init"}  # a PROJ key whose value is always a file to read
SHOWN = 80  # characters of the text quoted in a message

FORMS = "an authority code (EPSG:32633), a WKT or a PROJ string (+proj=…)"


def parse_crs(text: str, field: str):
    """`text` as a pyproj CRS; an InputError naming `field` (e.g. '--bbox-crs', 'reference_crs') when it is
    not one of the forms read here or names no CRS PROJ knows."""
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    if not isinstance(text, str) or "\x00" in text:
        raise InputError(f"{field}: not a CRS: give {FORMS}")
    stripped = text.strip()
    authority = _AUTHORITY.fullmatch(stripped) or _URN.fullmatch(stripped)
    try:
        if authority:
            name = authority.group(1).upper()
            crs = CRS.from_authority(name, authority.group(2))
            if authority.re is _AUTHORITY and authority.group(3):
                from pyproj.crs import CompoundCRS

                vertical = CRS.from_authority(name, authority.group(3))
                crs = CompoundCRS(f"{crs.name} + {vertical.name}", [crs, vertical])
            return crs
        if _WKT.match(stripped):
            _refuse_files_in_wkt(stripped, field)
            return CRS.from_wkt(stripped)
        if stripped.startswith("+proj="):
            _refuse_files_in_proj(stripped, field)
            return CRS.from_proj4(stripped)
    except CRSError:
        raise InputError(f"{field}: unknown CRS '{_shown(text)}'") from None
    raise InputError(f"{field}: '{_shown(text)}' is not a CRS the engine reads: give {FORMS}; "
                     f"it reads no URL or file for a CRS")


def _refuse_files_in_proj(text: str, field: str) -> None:
    for token in text.split():
        if _PROJ_TOKEN.fullmatch(token) is None:
            raise InputError(f"{field}: '{_shown(token)}' is not a PROJ parameter (+name or +name=value)")
    if not _names_no_file(text):
        raise InputError(f"{field}: the PROJ string names a file: the engine reads no file for a CRS (grids by "
                         f"bare name only)")


def _refuse_files_in_wkt(text: str, field: str) -> None:
    for keyword, value in _WKT_FILES.findall(text):
        # PARAMETERFILE names a grid; WKT1's EXTENSION holds a PROJ string ("PROJ4") or grid names
        if not _names_no_file(value):
            raise InputError(f"{field}: the WKT names a file ({keyword.upper()} '{_shown(value)}'): the engine "
                             f"reads no file for a CRS (grids by bare name only)")


def _names_no_file(text: str) -> bool:
    """Whether PROJ parameters (or grid names) name no file: no `+init=`, and every value a bare name."""
    for token in text.split():
        key, _, value = token.partition("=")
        if key.lstrip("+").lower() in _FILE_KEYS or not _bare_names(value if _ else key):
            return False
    return True


def _bare_names(value: str) -> bool:
    """Whether every item of a (comma-separated, '@'-optional) value is a bare name: no folder, drive or URL."""
    return not any(c in value for c in "/\\:") and not value.startswith("~")


def _shown(text: str) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= SHOWN else text[:SHOWN] + "…"


def forbid_network() -> None:
    """PROJ fetches no grid from its CDN in this process (pyproj's context and GDAL's, which reads the
    environment when it makes its own)."""
    os.environ["PROJ_NETWORK"] = "OFF"
    from pyproj import network

    network.set_network_enabled(False)
