"""Polygons of the class raster, streamed block by block, written to a GeoPackage.

Each block is split into 4-connected regions of one class (`scipy.ndimage.label`, the same
connectivity as `rasterio.features.shapes`), traced in pixel coordinates (column, row: whole numbers,
exact). Regions that touch an inner block border may continue in the neighbouring block: they are kept
aside in pixel coordinates and merged per class at the end (`unary_union`), so a field crossing block
borders is one polygon on any grid — in CRS coordinates the pieces of a rotated grid (or one whose pixel
size is no binary fraction) miss each other by ~1e-9 from block to block and would not merge. Every
polygon is then put on the grid's CRS by the one transform (`engine.geo.grid_geometry.on_grid`): the
polygons are the same whatever the block size. Attributes: class index and name, mean confidence
(probability of the chosen class), area in m² — of the region's pixels, as the summary counts them
(each row's pixel area: geodesic on geographic CRSs, on the ground on projections that distort it,
`engine.geo.products.row_pixel_area`), so simplifying an outline never changes it; null without CRS.
Polygons are simplified (Douglas-Peucker, tolerance in pixels) ring by ring, each ring that this would
collapse or change in area by over `MAX_AREA_CHANGE` kept as traced (thin and small regions: a 1 px wide
strip would become a triangle of half its area, a pixel half a pixel or nothing; holes of a pixel would
be filled), and those under `min_area` m² dropped.

Tracing a block's regions (`engine.geo.tracing`) is the costly part and needs nothing but the block, so
on a machine with cores to spare (`config.polygon_workers`) blocks are traced in worker processes,
a few blocks in flight, and their regions taken in block order: the same features in the same order
as tracing them one by one here.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections import defaultdict, deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import shapely
from affine import Affine

from engine import config
from engine.boxes import Box
from engine.errors import Cancelled
from engine.geo.grid_geometry import on_grid, pixel_sides
from engine.geo.tracing import Regions, block_regions, ignore_interrupts
from engine.geo.tracing import simplified as simplified_polygons
from engine.geo.vectors import write_wkb

# Features wait in memory (as WKB) until this many bytes, then go to the GeoPackage: the features of
# a first write are indexed once when GDAL closes the file, appended ones through the spatial index's
# triggers, row by row — on 512,899 polygons (48 MB) 1.9 s for one write against 4.2 s in 20,000s.
FLUSH_BYTES = 64 * 2**20

# A simplified ring (outline or hole) whose area differs from the traced one's by more than this fraction
# is not used: the ring stays as traced. Douglas-Peucker within 1 px collapses a pixel or a 1 px wide
# strip (to a triangle of half its area, or to nothing), takes a third of an L of 3 pixels, 8 % of a
# staircase triangle of 78 pixels, fills a hole of one pixel; it changes the area of a disc of 2,000
# pixels by about 1 %.
MAX_AREA_CHANGE = 0.05


def outlines(polygons: np.ndarray, transform: Affine, tolerance: float) -> np.ndarray:
    """Polygons traced in pixel coordinates → on the grid's CRS (`on_grid`), simplified within `tolerance`
    CRS units (0: not at all) ring by ring (outline and holes) by Douglas-Peucker, each ring that this
    collapses or whose area it changes by over `MAX_AREA_CHANGE` as traced: a thin or small region keeps
    its area, and so does the hole its neighbour fills (no overlap). Where a simplified hole then crosses
    its simplified outline, the polygon is simplified whole (`simplified_whole`). Vectorised throughout.
    Normalised first (`shapely.normalize`: the same start vertex and orientation), so that a region
    traced in one block and one merged from several (normalised too) come out the same."""
    if not len(polygons):
        return polygons
    # a rectangle (most small regions) comes normalised from GDAL, and Douglas-Peucker keeps it or
    # collapses it: left as traced (each geometry made also costs garbage-collection time)
    shaped = np.flatnonzero(shapely.get_num_coordinates(polygons) > 5)
    polygons = polygons.copy()
    polygons[shaped] = shapely.normalize(polygons[shaped])
    polygons = on_grid(polygons, transform)
    if tolerance <= 0:
        return polygons
    rings, owner = shapely.get_rings(polygons[shaped], return_index=True)  # outline, then holes
    todo = np.flatnonzero(shapely.get_num_coordinates(rings) > 5)
    alone = shapely.polygons(rings[todo])
    simple = shapely.simplify(alone, tolerance, preserve_topology=False)  # (made valid by GEOS)
    fits = ((shapely.get_type_id(simple) == shapely.GeometryType.POLYGON)
            & (shapely.get_num_interior_rings(simple) == 0) & _area_kept(simple, alone))
    if not fits.any():
        return polygons
    rings[todo[fits]] = shapely.get_exterior_ring(simple[fits])
    changed = np.zeros(len(shaped), dtype=bool)
    changed[owner[todo[fits]]] = True
    rebuilt = changed[owner]  # the rings of the polygons that changed
    which, slot = np.unique(owner[rebuilt], return_inverse=True)
    which = shaped[which]
    out = polygons.copy()
    out[which] = shapely.polygons(rings[rebuilt], indices=slot)
    holed = which[shapely.get_num_interior_rings(polygons[which]) > 0]
    crossed = holed[~shapely.is_valid(out[holed])]
    if len(crossed):
        out[crossed] = simplified_whole(polygons[crossed], tolerance)
    return out


def simplified_whole(polygons: np.ndarray, tolerance: float) -> np.ndarray:
    """Polygons simplified whole within `tolerance` (`engine.geo.tracing.simplified`: Douglas-Peucker,
    topology-preserving where that is invalid or empty — which on a polygon of hundreds of thousands of
    vertices, a road network merged across a large raster, takes seconds and hundreds of MB); each one
    whose simplified outline is still invalid, or changes its area by over `MAX_AREA_CHANGE`, as traced."""
    out = simplified_polygons(polygons, tolerance)
    keep = ~shapely.is_valid(out) | ~_area_kept(out, polygons)
    out[keep] = polygons[keep]
    return out


def _area_kept(simplified: np.ndarray, traced: np.ndarray) -> np.ndarray:
    """Whether each simplified geometry's area is within `MAX_AREA_CHANGE` of the traced one's (an empty
    one has none; NaN counts as changed)."""
    area = shapely.area(traced)
    return np.abs(shapely.area(simplified) - area) <= MAX_AREA_CHANGE * area


def traced_block(core: Box, classes: np.ndarray, confidence: np.ndarray, transform: Affine, height: int,
                 width: int, nodata: int, tolerance: float, row_area: np.ndarray | None) -> Regions:
    """A block's regions (`engine.geo.tracing.block_regions`) traced in pixel coordinates: those inside the
    block put on the grid and simplified (`outlines`), those at an inner block border left in pixel
    coordinates for the merge. Runs in the worker processes too: this module imports nothing heavy (no
    torch) at its top."""
    regions = block_regions(core, classes, confidence, Affine.identity(), height, width, nodata, 0.0, row_area)
    inner = ~regions.at_seam
    if inner.any():
        regions.polygons[inner] = outlines(regions.polygons[inner], transform, tolerance)
    return regions


class PolygonWriter:
    """Collects class regions block by block and writes them to a GeoPackage layer."""

    def __init__(self, path: Path, transform: Affine, crs, height: int, width: int, class_names: list[str],
                 simplify_px: float = 1.0, min_area: float = 0.0, row_area: np.ndarray | None = None):
        """`row_area`: m² of a pixel on each row of the raster (None without CRS: no areas)."""
        from engine.geo.rasters import NODATA, SCORE_MAX  # here: the worker processes import this module

        self.nodata, self.score_max = NODATA, SCORE_MAX
        self.path = path
        self.row_area = row_area
        self.transform, self.crs = transform, crs
        self.height, self.width = height, width
        self.class_names = class_names
        self.tolerance = simplify_px * pixel_sides(transform)  # in CRS units
        self.min_area = min_area
        self._seam: dict[int, list[tuple[shapely.Polygon, float, int, float]]] = defaultdict(list)
        self._rows: list[tuple[np.ndarray, ...]] = []  # chunks of (WKB, classes, scores, areas) to write
        self._unwritten = 0  # their bytes
        self._written = 0
        self.count = 0
        self.workers = config.polygon_workers(height * width)
        self._pool: ProcessPoolExecutor | None = None  # started with the first block, if workers > 1
        self._pending: deque[tuple[Future, tuple]] = deque()  # (regions being traced, the block)
    def add_block(self, core: Box, classes: np.ndarray, confidence: np.ndarray) -> None:
        if self._pool is None and self.workers > 1:
            self._pool = ProcessPoolExecutor(self.workers, multiprocessing.get_context("spawn"),
                                             initializer=ignore_interrupts)
        rows = None if self.row_area is None else self.row_area[core.y:core.y + core.h]
        block = (core, classes, confidence, self.transform, self.height, self.width, self.nodata, self.tolerance, rows)
        if self._pool is None:
            self._take(traced_block(*block))
            return
        self._pending.append((self._pool.submit(traced_block, *block), block))
        while len(self._pending) > 2 * self.workers:  # a few blocks in flight: memory stays bounded
            self._take_next()

    def _take_next(self) -> None:
        """The regions of the oldest block in flight; if the workers could not run (a script started
        without `if __name__ == "__main__":` cannot start processes), every block is traced here."""
        future, block = self._pending.popleft()
        try:
            regions = future.result()
        except BrokenProcessPool:
            pending = [block] + [b for _, b in self._pending]
            self._pending.clear()
            self.stop()
            self.workers = 1
            for block in pending:
                self._take(traced_block(*block))
            return
        self._take(regions)

    def _take(self, regions: Regions) -> None:
        seam = regions.at_seam
        for polygon, class_index, total, pixels, area in zip(regions.polygons[seam], regions.classes[seam],
                                                             regions.sums[seam], regions.pixels[seam],
                                                             regions.areas[seam]):
            self._seam[int(class_index)].append((polygon, float(total), int(pixels), float(area)))
        inner = ~seam
        self._add(regions.polygons[inner], regions.classes[inner], regions.sums[inner] / regions.pixels[inner],
                  regions.areas[inner], in_pixels=False)

    def _add(self, geoms: np.ndarray, classes: np.ndarray, mean_conf: np.ndarray, areas: np.ndarray,
             in_pixels: bool = True) -> None:
        """Polygons to write, with their class, mean confidence (0-254) and area (m² of their pixels):
        when in pixel coordinates put on the grid's CRS and simplified (`outlines`), and dropped when
        empty or under `min_area`."""
        if in_pixels and len(geoms):
            geoms = outlines(geoms, self.transform, self.tolerance)
        keep = ~shapely.is_empty(geoms)
        geoms, classes, mean_conf, areas = geoms[keep], classes[keep], mean_conf[keep], areas[keep]
        if self.min_area > 0:
            keep = ~(areas < self.min_area)  # no CRS (NaN): no area to compare, kept
            geoms, classes, mean_conf, areas = geoms[keep], classes[keep], mean_conf[keep], areas[keep]
        if len(geoms):
            wkb = shapely.to_wkb(geoms)
            self._rows.append((wkb, classes.astype(np.int32), mean_conf.astype(np.float64) / self.score_max, areas))
            self._unwritten += sum(map(len, wkb))
        if self._unwritten >= FLUSH_BYTES:
            self._flush()

    def _merge_seams(self, cancel: threading.Event | None = None) -> None:
        for class_index, parts in self._seam.items():
            if cancel is not None and cancel.is_set():  # each class's merge is one union: stop between them
                raise Cancelled("cancelled")
            polygons = np.array([p for p, _, _, _ in parts], dtype=object)
            merged = shapely.unary_union(polygons)  # in pixel coordinates: exact, the parts' borders coincide
            pieces = np.array(list(getattr(merged, "geoms", [merged])), dtype=object)
            # each part's confidence and pixels go to the merged piece holding a point inside it
            part_index, piece_index = shapely.STRtree(pieces).query(shapely.point_on_surface(polygons),
                                                                    predicate="intersects")
            first = np.unique(part_index, return_index=True)[1]
            piece_of = np.zeros(len(parts), dtype=np.int64)
            piece_of[part_index[first]] = piece_index[first]
            sums, sizes, areas = np.zeros(len(pieces)), np.zeros(len(pieces)), np.zeros(len(pieces))
            np.add.at(sums, piece_of, [s for _, s, _, _ in parts])  # in the parts' order, as one by one
            np.add.at(sizes, piece_of, [n for _, _, n, _ in parts])
            np.add.at(areas, piece_of, [a for _, _, _, a in parts])
            # without the vertices left on the block borders (where straight edges were cut) and normalised:
            # the outline a region traced in one block has, simplified alike
            pieces = shapely.normalize(shapely.simplify(pieces, 0.0, preserve_topology=False))
            self._add(pieces, np.full(len(pieces), class_index), sums / np.maximum(sizes, 1), areas)
        self._seam.clear()

    def _flush(self, force: bool = False) -> None:
        if not self._rows and not force:
            return
        if self._rows:
            wkb, classes, scores, areas = (np.concatenate(column) for column in zip(*self._rows))
        else:  # an empty layer
            wkb, classes, scores, areas = (np.array([], dtype=t) for t in (object, np.int32, np.float64, np.float64))
        fields = {
            "class_index": classes,
            "class": np.array(self.class_names, dtype=object)[classes],
            "score": scores,
            "area_m2": areas,
        }
        write_wkb(self.path, wkb, fields, self.crs, "polygons", append=self._written > 0)
        self._written += len(classes)
        self._rows.clear()
        self._unwritten = 0

    def close(self, cancel: threading.Event | None = None) -> int:
        """Take the blocks still being traced, merge the regions across block borders, write what is
        left; returns the polygon count. A cancel stops it between classes (Cancelled)."""
        try:
            while self._pending:
                if cancel is not None and cancel.is_set():
                    raise Cancelled("cancelled")
                self._take_next()
        finally:
            self.stop()
        self._merge_seams(cancel)
        self._flush(force=self._written == 0)  # an empty layer is still a valid GeoPackage
        return self._written

    def stop(self) -> None:
        """Drop the blocks not traced yet and end the worker processes (after an error, a cancel, or
        at the end)."""
        for future, _ in self._pending:
            future.cancel()
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
