"""Measures of a raster grid: its pixels' sides on the ground and in CRS units, its bounds."""

from __future__ import annotations

import math

from affine import Affine

from engine.geo.ground import GroundScale, linear_unit_metres


def pixel_metres(crs, transform: Affine, width: int, height: int) -> tuple[float, float] | None:
    """Ground size in metres of one pixel's side along its row and along its column, at the grid's
    centre, or None without a CRS. The sides are the lengths of the transform's column vectors, so a
    rotated grid has its true pixel size; on a geographic CRS measured on the ellipsoid (square degrees
    are narrower than tall away from the equator); on a projection that distorts (Web Mercator) the
    size on the ground (`engine.geo.ground`)."""
    if crs is None:
        return None
    if crs.is_geographic:
        from pyproj import Geod

        lon, lat = transform @ (width / 2, height / 2)
        geod = Geod(ellps="WGS84")
        _, _, dx = geod.inv(lon, on_globe(lat), lon + transform.a, on_globe(lat + transform.d))
        _, _, dy = geod.inv(lon, on_globe(lat), lon + transform.b, on_globe(lat + transform.e))
        return abs(dx), abs(dy)
    scale = GroundScale.of(crs, transform, width, height)
    centre = 1.0 if scale is None else scale.linear(*(transform @ (width / 2, height / 2)))
    unit = linear_unit_metres(crs) / centre
    return math.hypot(transform.a, transform.d) * unit, math.hypot(transform.b, transform.e) * unit


def on_globe(latitude: float) -> float:
    """A latitude a hair past a pole (a global grid's rounded corner) taken as the pole: geodesic measures
    are NaN beyond it (`RasterSource` refuses grids further past)."""
    return min(90.0, max(-90.0, latitude))


def pixel_sides(transform: Affine) -> float:
    """Mean length of a pixel's two sides in CRS units (rotation and flips included)."""
    return (math.hypot(transform.a, transform.d) + math.hypot(transform.b, transform.e)) / 2


def bounds_of(transform: Affine, width: float, height: float) -> tuple[float, float, float, float]:
    """(minx, miny, maxx, maxy) of a grid's four corners."""
    xs, ys = zip(*(transform @ (c, r) for c in (0, width) for r in (0, height)))
    return min(xs), min(ys), max(xs), max(ys)


def format_coordinate(value: float) -> str:
    """A coordinate as people write it: -2832800.5, 13.404954 (no exponent, no trailing zeros)."""
    return f"{value:.6f}".rstrip("0").rstrip(".")
