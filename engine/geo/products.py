"""A segmentation's products, fed block by block on the source grid in one pass.

For each finished working-grid block (uint8 class indices, confidence and optional scores, and its
validity), `SegmentationProducts.add` puts it back on the source grid (nearest neighbour, see
`RasterSource.to_source_grid`) and, in the same step, writes the class raster (and the score
raster) as temporary tiled GeoTIFFs, feeds the polygon writer, and counts pixels and areas per
class. Nothing is read back afterwards; `close` finishes the polygons and returns the statistics.
It runs in the pipeline's writer thread, beside the compute of the next block.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from engine.boxes import Box
from engine.geo.polygons import PolygonWriter
from engine.geo.rasters import NODATA, SCORE_MAX, TiledRaster
from engine.geo.source import RasterSource, linear_unit_metres


class SegmentationProducts:
    """Class raster, optional score raster, polygons and per-class statistics of one run."""

    def __init__(self, source: RasterSource, work: Path, class_names: list[str], tags: dict[str, str],
                 colormap: dict[int, tuple], scores: bool, polygons: bool, simplify: float, min_area: float):
        self.source = source
        h, w, transform, crs = source.height, source.width, source.raster_transform, source.crs
        self.classes = TiledRaster(work / "classes.tif", h, w, 1, transform, crs, ["class"], tags, colormap)
        self.scores = (TiledRaster(work / "scores.tif", h, w, len(class_names), transform, crs, class_names, tags,
                                   scale=1 / SCORE_MAX) if scores else None)
        self.polygons = (PolygonWriter(work / "polygons.gpkg", source.transform, crs, h, w, class_names, simplify,
                                       min_area) if polygons else None)
        self.counts = np.zeros(256, dtype=np.int64)
        self.row_area = row_pixel_area(source)
        self.areas = None if self.row_area is None else np.zeros(256)

    def add(self, core: Box, labels: np.ndarray, confidence: np.ndarray | None, scores: np.ndarray | None,
            valid: np.ndarray) -> None:
        """One working-grid block: uint8 labels [h, w], confidence [h, w] (for the polygons) and
        scores [C, h, w], each None when not made."""
        invalid = None if valid.all() else ~valid
        arrays = [a for a in (labels, confidence, scores) if a is not None]
        if invalid is not None:
            for a in arrays:
                a[..., invalid] = NODATA
        rect, arrays = self.source.to_source_grid(core, *arrays)
        if rect.h == 0 or rect.w == 0:
            return
        arrays = iter(arrays)
        labels = next(arrays)
        confidence = next(arrays) if confidence is not None else None
        self.classes.write(rect, labels)
        if scores is not None:
            self.scores.write(rect, next(arrays))
        self._count(rect, labels)
        if self.polygons is not None:
            self.polygons.add_block(rect, labels, confidence)

    def _count(self, rect: Box, labels: np.ndarray) -> None:
        counts = np.bincount(labels.ravel(), minlength=256)
        self.counts += counts
        if self.areas is None:
            return
        rows = self.row_area[rect.y:rect.y + rect.h]
        if np.all(rows == rows[0]):  # projected CRS: one pixel area
            self.areas += counts * rows[0]
        else:  # geographic: pixel area changes with the row
            per_row = np.stack([np.bincount(r, minlength=256) for r in labels])
            self.areas += (per_row * rows[:, None]).sum(axis=0)

    def close(self, cancel: threading.Event | None = None) -> tuple[np.ndarray, np.ndarray | None, int]:
        """Finish the files; (pixel counts per class value, areas in m² or None, polygon count). A cancel
        stops the polygons' final merge between classes."""
        self.close_rasters()
        n_polygons = self.polygons.close(cancel) if self.polygons is not None else 0
        return self.counts, self.areas, n_polygons

    def close_rasters(self) -> None:
        for raster in (self.classes, self.scores):
            if raster is not None:
                raster.close()


def row_pixel_area(source: RasterSource) -> np.ndarray | None:
    """Area in m² of one source pixel on each row (rows differ on geographic CRSs), None without CRS:
    the true area of the pixel's parallelogram (|det| of the transform), so rotated grids count right."""
    crs, t = source.crs, source.transform
    if crs is None:
        return None
    if crs.is_geographic:
        from pyproj import Geod
        from shapely.geometry import Polygon

        geod = Geod(ellps="WGS84")
        c = source.width / 2  # a pixel of the row's middle (rows run along parallels unless rotated)
        areas = [abs(geod.geometry_area_perimeter(Polygon([t * (c, r), t * (c + 1, r), t * (c + 1, r + 1),
                                                           t * (c, r + 1)]))[0])
                 for r in range(source.height)]
        return np.asarray(areas)
    unit = linear_unit_metres(crs)
    return np.full(source.height, abs(t.a * t.e - t.b * t.d) * unit * unit)
