"""Ground measures on projected CRSs that distort them (Web Mercator and the like).

A projected CRS measures lengths and areas in its own units, true on the ground only where the
projection's scale factor is 1. On the CRSs made for measuring (UTM, national grids, equal-area
projections) that holds to about 0.1 % over a raster, and the engine takes the CRS's units as they are.
Web Mercator — the CRS of XYZ and web layers, and of what QGIS exports from them — is 1.64× too long
and 2.70× too large in area at 52° N. So where a projection's areal scale departs from 1 by more than
`TOLERANCE` somewhere on a raster (its corners and centre), the engine measures on the ground through
the projection's scale on its ellipsoid (`GroundScale`): the raster's GSD (hence the default working
resolution, `--gsd`, grid cell sizes) is the ground size of a pixel at its centre, areas per class in
the summary are pixel areas divided by the areal scale at each pixel row's centre, and a polygon's
area is its planar area divided by the scale at its centroid, or for one over 20 km across its area
on the ellipsoid (its vertices taken to longitude and latitude) — as QGIS measures on the ellipsoid.
"""

from __future__ import annotations

import math

import numpy as np

TOLERANCE = 0.01  # an areal scale within 1 % of 1 over the raster: the CRS's own units are the ground's
LOCAL_M = 20_000.0  # a polygon smaller than this across (CRS metres) is measured by the scale at its centroid
SEGMENT_M = 5000.0  # the edges of a larger one are cut into pieces this long before measuring on the ellipsoid


class GroundScale:
    """The areal scale of a projected CRS at points given in its coordinates, measured on its ellipsoid:
    the CRS area of a small step east by a step north against the geodesic area of its image (so Web
    Mercator, a spherical formula on WGS 84 coordinates, is measured on WGS 84 as QGIS does)."""

    def __init__(self, crs):
        import pyproj

        projected = pyproj.CRS.from_wkt(crs.to_wkt())
        self._to_lonlat = pyproj.Transformer.from_crs(projected, projected.geodetic_crs, always_xy=True)
        self._geod = projected.geodetic_crs.get_geod()
        self._unit = crs.linear_units_factor[1] if crs.linear_units_factor else 1.0

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

    def polygon_areas(self, geoms: np.ndarray) -> np.ndarray:
        """Areas on the ground (m²) of polygons given in CRS coordinates. A polygon under LOCAL_M across:
        its planar area divided by the areal scale at its centroid (the scale hardly changes inside it:
        under 10⁻⁵ of the area). A larger one — spanning degrees of latitude, where no one scale would
        do — its area on the ellipsoid, its edges cut into pieces of at most SEGMENT_M first (a straight
        edge of the map, a parallel in Web Mercator, is not the geodesic between its ends: 0.2 % of the
        area of a polygon 1000 km tall at 50° N)."""
        import shapely

        geoms = np.asarray(geoms)
        planar = shapely.area(geoms) * self._unit ** 2
        bounds = shapely.bounds(geoms)
        large = np.maximum(bounds[:, 2] - bounds[:, 0], bounds[:, 3] - bounds[:, 1]) * self._unit > LOCAL_M
        centres = shapely.centroid(geoms[~large])
        areas = np.empty(len(geoms), dtype=np.float64)
        areas[~large] = self.ground_areas(planar[~large], shapely.get_x(centres), shapely.get_y(centres))

        def to_lonlat(xy: np.ndarray) -> np.ndarray:
            return np.column_stack(self._to_lonlat.transform(xy[:, 0], xy[:, 1], errcheck=False))

        lonlat = shapely.transform(shapely.segmentize(geoms[large], SEGMENT_M / self._unit), to_lonlat)
        areas[large] = [abs(self._geod.geometry_area_perimeter(g)[0]) for g in lonlat]
        return areas

    def linear(self, x: float, y: float) -> float:
        """Map length ÷ ground length at a point (the mean over directions, as √ of the areal scale)."""
        areal = float(self.areal(np.array([x]), np.array([y]))[0])
        return math.sqrt(areal) if math.isfinite(areal) and areal > 0 else 1.0
