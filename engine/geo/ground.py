"""Ground measures on projected CRSs that distort them (Web Mercator and the like).

A projected CRS measures lengths and areas in its own units, true on the ground only where the
projection's scale factor is 1. On the CRSs made for measuring (UTM, national grids, equal-area
projections) that holds to about 0.1 % over a raster, and the engine takes the CRS's units as they are.
Web Mercator — the CRS of XYZ and web layers, and of what QGIS exports from them — is 1.64× too long
and 2.70× too large in area at 52° N. So where a projection's areal scale departs from 1 by more than
`TOLERANCE` somewhere on a raster (its corners and centre), the engine measures on the ground through
the projection's scale on its ellipsoid (`GroundScale`): the raster's GSD (hence the default working
resolution, `--gsd`, grid cell sizes) is the ground size of a pixel at its centre, and a pixel's area
on each row (so the areas per class in the summary and of each polygon, the sum of its pixels') is its
CRS area divided by the areal scale at the row's centre — as QGIS measures on the ellipsoid.
"""

from __future__ import annotations

import math

import numpy as np

TOLERANCE = 0.01  # an areal scale within 1 % of 1 over the raster: the CRS's own units are the ground's


def linear_unit_metres(crs) -> float:
    """Metres per unit of a projected CRS, or of a local (engineering) one — the plain site coordinates
    drone photogrammetry writes, in metres or feet (rasterio knows no unit for those)."""
    from rasterio.errors import CRSError

    try:
        return crs.linear_units_factor[1] if crs.linear_units_factor else 1.0
    except CRSError:
        import pyproj

        axes = pyproj.CRS.from_wkt(crs.to_wkt()).axis_info
        angular = ("degree", "radian", "grad", "arc")
        if axes and axes[0].unit_conversion_factor and not any(a in axes[0].unit_name.lower() for a in angular):
            return float(axes[0].unit_conversion_factor)
        return 1.0


class GroundScale:
    """The areal scale of a projected CRS at points given in its coordinates, measured on its ellipsoid:
    the CRS area of a small step east by a step north against the geodesic area of its image (so Web
    Mercator, a spherical formula on WGS 84 coordinates, is measured on WGS 84 as QGIS does)."""

    def __init__(self, crs):
        import pyproj

        projected = pyproj.CRS.from_wkt(crs.to_wkt())
        self._to_lonlat = pyproj.Transformer.from_crs(projected, projected.geodetic_crs, always_xy=True)
        self._geod = projected.geodetic_crs.get_geod()
        self._unit = linear_unit_metres(crs)

    @classmethod
    def of(cls, crs, transform, width: float, height: float) -> "GroundScale | None":
        """The scale of `crs` over a grid (`transform`, `width` × `height` pixels) when it distorts areas by
        more than TOLERANCE there; None for a CRS measuring true enough (or geographic, or none)."""
        if crs is None or crs.is_geographic:
            return None
        try:
            scale = cls(crs)
        except Exception:  # a CRS pyproj cannot use: its units as they are
            return None
        xs, ys = zip(*(transform @ (c, r) for c in (0, width / 2, width) for r in (0, height / 2, height)))
        areal = scale.areal(np.asarray(xs), np.asarray(ys))
        areal = areal[np.isfinite(areal) & (areal > 0)]
        if areal.size == 0 or np.all(np.abs(areal - 1.0) <= TOLERANCE):
            return None
        return scale

    def areal(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Map area ÷ ground area at each point (CRS coordinates); NaN where the CRS is undefined."""
        xs, ys = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
        step = 1.0  # CRS units: short enough for the scale to be constant over it
        with np.errstate(all="ignore"):
            lon, lat = self._to_lonlat.transform(xs, ys, errcheck=False)
            east_lon, east_lat = self._to_lonlat.transform(xs + step, ys, errcheck=False)
            north_lon, north_lat = self._to_lonlat.transform(xs, ys + step, errcheck=False)
            east_azimuth, _, east = self._geod.inv(lon, lat, east_lon, east_lat)
            north_azimuth, _, north = self._geod.inv(lon, lat, north_lon, north_lat)
            ground = np.asarray(east) * np.asarray(north) * np.abs(np.sin(np.radians(
                np.asarray(north_azimuth) - np.asarray(east_azimuth))))
            return (step * self._unit) ** 2 / ground

    def ground_areas(self, planar_m2: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Planar areas (in m² of the CRS's units) of things at the given points, as areas on the ground
        (left planar where the scale is undefined)."""
        areal = self.areal(xs, ys)
        areal = np.where(np.isfinite(areal) & (areal > 0), areal, 1.0)
        return np.asarray(planar_m2, dtype=np.float64) / areal

    def linear(self, x: float, y: float) -> float:
        """Map length ÷ ground length at a point (the mean over directions, as √ of the areal scale)."""
        areal = float(self.areal(np.array([x]), np.array([y]))[0])
        return math.sqrt(areal) if math.isfinite(areal) and areal > 0 else 1.0
