"""Polygons of the class raster, streamed block by block, written to a GeoPackage.

Each block is split into 4-connected regions of one class (`scipy.ndimage.label`, the same
connectivity as `rasterio.features.shapes`). Regions that touch an inner block border may continue
in the neighbouring block: they are kept aside and merged per class at the end (`unary_union`), so
a field crossing block borders is one polygon. Attributes: class index and name, mean confidence
(probability of the chosen class), area in m² (geodesic on geographic CRSs; null without CRS).
Polygons are simplified (tolerance in pixels) and those under `min_area` m² dropped.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from pathlib import Path

import numpy as np
import shapely
from affine import Affine
from rasterio.features import shapes
from scipy import ndimage
from shapely.geometry import shape

from engine.boxes import Box
from engine.errors import Cancelled
from engine.geo.rasters import NODATA, SCORE_MAX
from engine.geo.source import linear_unit_metres, pixel_sides
from engine.geo.vectors import write_features

_FLUSH_EVERY = 20_000


class PolygonWriter:
    """Collects class regions block by block and writes them to a GeoPackage layer."""

    def __init__(self, path: Path, transform: Affine, crs, height: int, width: int, class_names: list[str],
                 simplify_px: float = 1.0, min_area: float = 0.0):
        self.path = path
        self.transform, self.crs = transform, crs
        self.height, self.width = height, width
        self.class_names = class_names
        self.tolerance = simplify_px * pixel_sides(transform)
        self.min_area = min_area
        self._seam: dict[int, list[tuple[shapely.Polygon, float, int]]] = defaultdict(list)
        self._rows: list[tuple[shapely.Geometry, int, float, float | None]] = []
        self._written = 0
        self.count = 0
        if crs is None:
            self._area_factor, self._geod = None, None
        elif crs.is_geographic:
            from pyproj import Geod

            self._area_factor, self._geod = None, Geod(ellps="WGS84")
        else:
            unit = linear_unit_metres(crs)
            self._area_factor, self._geod = unit * unit, None

    def area_m2(self, geom) -> float | None:
        if self._geod is not None:
            return abs(self._geod.geometry_area_perimeter(geom)[0])
        return None if self._area_factor is None else geom.area * self._area_factor

    def add_block(self, core: Box, classes: np.ndarray, confidence: np.ndarray) -> None:
        labels = np.zeros(classes.shape, dtype=np.int32)
        owner: list[int] = [NODATA]
        for value in np.unique(classes):
            if value == NODATA:
                continue
            lab, n = ndimage.label(classes == value)
            labels[lab > 0] = lab[lab > 0] + len(owner) - 1
            owner.extend([int(value)] * n)
        if len(owner) == 1:
            return
        owner_arr = np.asarray(owner)
        sums = np.bincount(labels.ravel(), weights=confidence.ravel().astype(np.float64), minlength=len(owner))
        sizes = np.bincount(labels.ravel(), minlength=len(owner))
        seam_ids = set()
        if core.y > 0:
            seam_ids.update(np.unique(labels[0]))
        if core.y + core.h < self.height:
            seam_ids.update(np.unique(labels[-1]))
        if core.x > 0:
            seam_ids.update(np.unique(labels[:, 0]))
        if core.x + core.w < self.width:
            seam_ids.update(np.unique(labels[:, -1]))
        transform = self.transform * Affine.translation(core.x, core.y)
        for geojson, value in shapes(labels, mask=labels > 0, connectivity=4, transform=transform):
            cid = int(value)
            polygon = shape(geojson)
            if cid in seam_ids:
                self._seam[int(owner_arr[cid])].append((polygon, float(sums[cid]), int(sizes[cid])))
            else:
                self._add(polygon, int(owner_arr[cid]), sums[cid] / sizes[cid])

    def _add(self, geom, class_index: int, mean_conf: float) -> None:
        if self.tolerance > 0:
            geom = geom.simplify(self.tolerance, preserve_topology=True)
        if geom.is_empty:
            return
        area = self.area_m2(geom)
        if self.min_area > 0 and area is not None and area < self.min_area:
            return
        self._rows.append((geom, class_index, float(mean_conf) / SCORE_MAX, area))
        if len(self._rows) >= _FLUSH_EVERY:
            self._flush()

    def _merge_seams(self, cancel: threading.Event | None = None) -> None:
        for class_index, parts in self._seam.items():
            if cancel is not None and cancel.is_set():  # each class's merge is one union: stop between them
                raise Cancelled("cancelled")
            merged = shapely.unary_union([p for p, _, _ in parts])
            pieces = list(getattr(merged, "geoms", [merged]))
            tree = shapely.STRtree(pieces)
            sums = np.zeros(len(pieces))
            sizes = np.zeros(len(pieces))
            for polygon, s, n in parts:
                candidates = tree.query(polygon.representative_point(), predicate="intersects")
                k = int(candidates[0]) if len(candidates) else 0
                sums[k] += s
                sizes[k] += n
            for piece, s, n in zip(pieces, sums, sizes):
                self._add(piece, class_index, s / max(n, 1))
        self._seam.clear()

    def _flush(self, force: bool = False) -> None:
        if not self._rows and not force:
            return
        classes = np.array([c for _, c, _, _ in self._rows], dtype=np.int32)
        fields = {
            "class_index": classes,
            "class": np.array([self.class_names[c] for c in classes], dtype=object),
            "score": np.array([s for _, _, s, _ in self._rows], dtype=np.float64),
            "area_m2": np.array([np.nan if a is None else a for *_, a in self._rows], dtype=np.float64),
        }
        write_features(self.path, [g for g, *_ in self._rows], fields, self.crs, "polygons", append=self._written > 0)
        self._written += len(self._rows)
        self._rows.clear()

    def close(self, cancel: threading.Event | None = None) -> int:
        """Merge the regions across block borders, write what is left; returns the polygon count. A
        cancel stops it between classes (Cancelled)."""
        self._merge_seams(cancel)
        self._flush(force=self._written == 0)  # an empty layer is still a valid GeoPackage
        return self._written
