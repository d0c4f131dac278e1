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
Polygons are simplified as one coverage (`engine.geo.coverage`: each boundary between two neighbours
once, for both — no gaps or overlaps; thin and small regions keep their traced outline), tolerance in
pixels, and those under `min_area` m² dropped. Simplifying a region needs its neighbours, and theirs:
the regions within `LEVELS` neighbours of one crossing a block border wait for the merge with it.

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
from affine import Affine

from engine import config
from engine.boxes import Box
from engine.errors import Cancelled
from engine.geo.coverage import OUTSIDE, Coverage, Nodes, framed, node_corners
from engine.geo.grid_geometry import on_grid
from engine.geo.tracing import Regions, ignore_interrupts, labelled, labelled_regions
from engine.geo.vectors import write_wkb

# Features wait in memory (as WKB) until this many bytes, then go to the GeoPackage: the features of
# a first write are indexed once when GDAL closes the file, appended ones through the spatial index's
# triggers, row by row — on 512,899 polygons (48 MB) 1.9 s for one write against 4.2 s in 20,000s.
FLUSH_BYTES = 64 * 2**20

# The levels of `Coverage.decide`: with two, no polygon was left invalid by the mix of simplified and traced
# sections on fragmented maps (with one, 6 of 40,498 were); a region's outline depends on its neighbours
# up to this many steps away.
LEVELS = 2


@dataclass
class TracedBlock:
    """A block's regions: those done (on the grid's CRS, simplified), those at a seam (`regions.at_seam`)
    and those `kept` (both in pixel coordinates, simplified with the merged seams at the end), with what
    that needs: the block's node corners on them (`engine.geo.coverage`), and per level the sections by
    a kept region that a region done here decided traced."""

    regions: Regions
    kept: np.ndarray  # bool per region
    nodes: np.ndarray  # int64 corner keys
    traced_keys: list[np.ndarray]  # int64 section keys, per level


def traced_block(core: Box, classes: np.ndarray, confidence: np.ndarray, transform: Affine, height: int,
                 width: int, nodata: int, tolerance: float, row_area: np.ndarray | None) -> TracedBlock:
    """A block's regions (`engine.geo.tracing`) traced in pixel coordinates: those within `LEVELS`
    neighbours of a region at an inner block border kept in pixel coordinates for the end, the others
    simplified within `tolerance` pixels (0: only the corners where a boundary runs straight on left out)
    as a coverage (`engine.geo.coverage`) and put on the grid. Runs in the worker
    processes too: this module imports nothing heavy (no torch) at its top."""
    labels, owner = labelled(classes, nodata, regions_of_nodata=True)  # (never simplified, never written)
    regions, ids = labelled_regions(core, labels, owner, confidence, Affine.identity(), height, width, row_area)
    none = np.array([], dtype=np.int64)
    at_seam = np.zeros(len(owner), dtype=bool)
    at_seam[ids[regions.at_seam]] = True
    near = _near_regions(labels, at_seam, LEVELS)
    kept = near[ids] & ~regions.at_seam
    # the block's node corners, but those on an inner block border: whether one there is a node depends on
    # the pixels beyond it (the writer finds those)
    rows, columns = np.nonzero(node_corners(framed(classes)))
    inner = ~(((rows == 0) & (core.y > 0)) | ((rows == core.h) & (core.y + core.h < height))
              | ((columns == 0) & (core.x > 0)) | ((columns == core.w) & (core.x + core.w < width)))
    rows, columns = rows[inner], columns[inner]
    corner_keys = (core.y + rows).astype(np.int64) * (width + 1) + core.x + columns
    inside = ~regions.at_seam
    traced_keys = [none] * LEVELS
    if inside.any():
        coverage = Coverage(regions.polygons[inside], Nodes(corner_keys, width, height), tolerance,
                            fixed=regions.classes[inside] == nodata)
        levels = coverage.decide(LEVELS)
        done = ~kept[inside]
        regions.polygons[inside & ~kept] = on_grid(coverage.outlines(levels[-1][0], done), transform)
        traced_keys = [coverage.keys_unsound_beside(sound, done, ~done) for _, sound in levels]
    # those on the seam and kept regions, for the end
    framed_labels = np.pad(labels, 1)
    on_them = (near[framed_labels[rows, columns]] | near[framed_labels[rows, columns + 1]]
               | near[framed_labels[rows + 1, columns]] | near[framed_labels[rows + 1, columns + 1]])
    return TracedBlock(regions, kept, corner_keys[on_them], traced_keys)


def _near_regions(labels: np.ndarray, marked: np.ndarray, steps: int) -> np.ndarray:
    """Which region ids are `marked` or within `steps` 4-neighbours of one (id 0, pixels of no region, is none)."""
    first, second = [], []
    for one, other in ((labels[:, :-1], labels[:, 1:]), (labels[:-1], labels[1:])):
        differ = one != other
        first.append(one[differ])
        second.append(other[differ])
    first, second = np.concatenate(first), np.concatenate(second)
    near = marked.copy()
    for _ in range(steps):
        touching = near[first] | near[second]
        near[first[touching]] = near[second[touching]] = True
        near[0] = False
    return near


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
        self.tolerance = simplify_px
        self.min_area = min_area
        self._seam: dict[int, list[tuple[shapely.Polygon, float, int, float]]] = defaultdict(list)
        self._kept: list[tuple[np.ndarray, ...]] = []  # (polygons, classes, confidence sums, pixels, areas)
        self._nodes: list[np.ndarray] = []  # the blocks' node corners on seam and kept regions
        self._traced_keys: list[list[np.ndarray]] = [[] for _ in range(LEVELS)]
        self._borders: dict[tuple[str, int], np.ndarray] = {}  # the pixels on both sides of inner block borders
        self._rows: list[tuple[np.ndarray, ...]] = []  # chunks of (WKB, classes, scores, areas) to write
        self._unwritten = 0  # their bytes
        self._written = 0
        self.count = 0
        self.workers = config.polygon_workers(height * width)
        self._pool: ProcessPoolExecutor | None = None  # started with the first block, if workers > 1
        self._pending: deque[tuple[Future, tuple]] = deque()  # (regions being traced, the block)

    def add_block(self, core: Box, classes: np.ndarray, confidence: np.ndarray) -> None:
        self._keep_borders(core, classes)
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

    def _keep_borders(self, core: Box, classes: np.ndarray) -> None:
        """The block's rows and columns along inner block borders: whether a corner on a border is a node
        depends on the pixels of the blocks on both sides."""
        for inner, key, side, span, line in (
                (core.y > 0, ("row", core.y), 1, (core.x, core.w), classes[0]),
                (core.y + core.h < self.height, ("row", core.y + core.h), 0, (core.x, core.w), classes[-1]),
                (core.x > 0, ("column", core.x), 1, (core.y, core.h), classes[:, 0]),
                (core.x + core.w < self.width, ("column", core.x + core.w), 0, (core.y, core.h), classes[:, -1])):
            if inner:
                length = self.width if key[0] == "row" else self.height
                pair = self._borders.setdefault(key, np.full((2, length), OUTSIDE, dtype=np.int16))
                pair[side, span[0]:span[0] + span[1]] = line

    def _border_nodes(self) -> np.ndarray:
        """The keys of the node corners on inner block borders."""
        keys = [np.array([], dtype=np.int64)]
        for (kind, at), pair in self._borders.items():
            if kind == "row":  # corners (at, 0 … width)
                keys.append(at * (self.width + 1) + np.flatnonzero(node_corners(framed(pair)[1:-1])[0]))
            else:  # corners (0 … height, at)
                keys.append(np.flatnonzero(node_corners(framed(pair.T)[:, 1:-1])[:, 0]) * (self.width + 1) + at)
        return np.concatenate(keys)

    def _take(self, traced: TracedBlock) -> None:
        regions = traced.regions
        seam = regions.at_seam
        for polygon, class_index, total, pixels, area in zip(regions.polygons[seam], regions.classes[seam],
                                                             regions.sums[seam], regions.pixels[seam],
                                                             regions.areas[seam]):
            self._seam[int(class_index)].append((polygon, float(total), int(pixels), float(area)))
        if traced.kept.any():
            kept = traced.kept
            self._kept.append((regions.polygons[kept], regions.classes[kept], regions.sums[kept], regions.pixels[kept],
                               regions.areas[kept]))
        self._nodes.append(traced.nodes)
        for level, keys in enumerate(traced.traced_keys):
            self._traced_keys[level].append(keys)
        done = ~seam & ~traced.kept & (regions.classes != self.nodata)
        self._add(regions.polygons[done], regions.classes[done], regions.sums[done] / regions.pixels[done],
                  regions.areas[done])

    def _add(self, geoms: np.ndarray, classes: np.ndarray, mean_conf: np.ndarray, areas: np.ndarray) -> None:
        """Polygons to write (on the grid's CRS), with their class, mean confidence (0-254) and area (m² of
        their pixels), dropped when empty or under `min_area`."""
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
        """The regions crossing block borders merged per class, and simplified with the kept regions."""
        merged: list[tuple[np.ndarray, ...]] = list(self._kept)
        for class_index, parts in self._seam.items():
            if cancel is not None and cancel.is_set():  # each class's merge is one union: stop between them
                raise Cancelled("cancelled")
            polygons = np.array([p for p, _, _, _ in parts], dtype=object)
            union = shapely.unary_union(polygons)  # in pixel coordinates: exact, the parts' borders coincide
            pieces = np.array(list(getattr(union, "geoms", [union])), dtype=object)
            # each part's confidence and pixels go to the merged piece holding a point inside it
            part_index, piece_index = shapely.STRtree(pieces).query(shapely.point_on_surface(polygons),
                                                                    predicate="intersects")
            first = np.unique(part_index, return_index=True)[1]
            piece_of = np.zeros(len(parts), dtype=np.int64)
            piece_of[part_index[first]] = piece_index[first]
            sums, sizes, areas = np.zeros(len(pieces)), np.zeros(len(pieces), dtype=np.int64), np.zeros(len(pieces))
            np.add.at(sums, piece_of, [s for _, s, _, _ in parts])  # in the parts' order, as one by one
            np.add.at(sizes, piece_of, [n for _, _, n, _ in parts])
            np.add.at(areas, piece_of, [a for _, _, _, a in parts])
            merged.append((pieces, np.full(len(pieces), class_index), sums, sizes, areas))
        self._seam.clear()
        self._kept.clear()
        if not merged:
            return
        polygons, classes, sums, sizes, areas = (np.concatenate(column) for column in zip(*merged))
        nodes = Nodes(np.concatenate(self._nodes + [self._border_nodes()]), self.width, self.height)
        data = classes != self.nodata
        coverage = Coverage(polygons, nodes, self.tolerance, fixed=~data)
        traced_keys = [np.unique(np.concatenate([np.array([], dtype=np.int64)] + keys)) for keys in self._traced_keys]
        simplified = coverage.decide(LEVELS, traced_keys)[-1][0]
        polygons = coverage.outlines(simplified, data)
        classes, sums, sizes, areas = classes[data], sums[data], sizes[data], areas[data]
        self._add(on_grid(polygons, self.transform), classes, sums / np.maximum(sizes, 1), areas)

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
