"""Measures of a raster grid: its pixels' sides on the ground and in CRS units, its bounds, the ellipsoid its
geographic CRS measures on, and its pixel coordinates put on its CRS."""

from __future__ import annotations

import math

from affine import Affine

from engine.geo.ground import GroundScale, linear_unit_metres


def pixel_metres(crs, transform: Affine, width: int, height: int) -> tuple[float, float] | None:
    """Ground size in metres of one pixel's side along its row and along its column, at the grid's
    centre, or None without a CRS. The sides are the lengths of the transform's column vectors, so a
    rotated grid has its true pixel size; on a geographic CRS measured on its ellipsoid (`geod_of`: square
    degrees are narrower than tall away from the equator); on a projection that distorts (Web Mercator) the
    size on the ground (`engine.geo.ground`)."""
    if crs is None:
        return None
    if crs.is_geographic:
        lon, lat = transform @ (width / 2, height / 2)
        geod = geod_of(crs)
        _, _, dx = geod.inv(lon, on_globe(lat), lon + transform.a, on_globe(lat + transform.d))
        _, _, dy = geod.inv(lon, on_globe(lat), lon + transform.b, on_globe(lat + transform.e))
        return abs(dx), abs(dy)
    scale = GroundScale.of(crs, transform, width, height)
    centre = 1.0 if scale is None else scale.linear(*(transform @ (width / 2, height / 2)))
    unit = linear_unit_metres(crs) / centre
    return math.hypot(transform.a, transform.d) * unit, math.hypot(transform.b, transform.e) * unit


def geod_of(crs):
    """Geodesic measures (pyproj `Geod`) on the ellipsoid of `crs` — a rasterio or pyproj CRS, its own body's
    (Mars 2000 for a Mars raster: measured on WGS 84 it would be 1.9× too long, 3.5× too large) — or on
    WGS 84 when the CRS names none or pyproj cannot read it."""
    from pyproj import CRS, Geod

    try:
        geod = CRS.from_user_input(crs).get_geod()
    except Exception:  # a CRS pyproj cannot use: the Earth's
        geod = None
    return geod if geod is not None else Geod(ellps="WGS84")


def on_globe(latitude: float) -> float:
    """A latitude a hair past a pole (a global grid's rounded corner) taken as the pole: geodesic measures
    are NaN beyond it (`RasterSource` refuses grids further past)."""
    return min(90.0, max(-90.0, latitude))


def pixel_sides(transform: Affine) -> float:
    """Mean length of a pixel's two sides in CRS units (rotation and flips included)."""
    return (math.hypot(transform.a, transform.d) + math.hypot(transform.b, transform.e)) / 2


def on_grid(geometries, transform: Affine):
    """Geometries (a shapely array) in pixel coordinates (column, row) → in the grid's CRS coordinates, every
    vertex through the one `transform`: a pixel corner gets the same coordinates in each polygon that has
    it, whichever block traced it (a block's own transform, the grid's with its offset, is rounded
    differently and puts the corners of a rotated or non-binary grid ~1e-9 apart from one block to the next)."""
    import numpy as np
    import shapely

    a, b, c, d, e, f = transform[:6]

    def apply(xy: np.ndarray) -> np.ndarray:
        x, y = xy[:, 0], xy[:, 1]
        return np.column_stack((a * x + b * y + c, d * x + e * y + f))

    return shapely.transform(geometries, apply)


def bounds_of(transform: Affine, width: float, height: float) -> tuple[float, float, float, float]:
    """(minx, miny, maxx, maxy) of a grid's four corners."""
    xs, ys = zip(*(transform @ (c, r) for c in (0, width) for r in (0, height)))
    return min(xs), min(ys), max(xs), max(ys)


def format_coordinate(value: float) -> str:
    """A coordinate as people write it: -2832800.5, 13.404954 (no exponent, no trailing zeros)."""
    return f"{value:.6f}".rstrip("0").rstrip(".")
