"""A segmentation's products, fed block by block on the source grid in one pass.

Each finished working-grid block (uint8 class indices, confidence and optional scores, and its
validity) is first made ready on the model's device (`on_source_grid`: no data where invalid, put
back on the source grid by nearest neighbour — `RasterSource.to_source_grid` — and its pixels
counted per class); then `SegmentationProducts.add` (beside a GPU in the pipeline's writer thread,
while the next block is computed) writes the class raster (and the score raster) as temporary tiled
GeoTIFFs with their overviews, feeds the polygon writer, and adds up pixels and areas per class.
Nothing is read back afterwards; `close` finishes the polygons and returns the statistics.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch

from engine.boxes import Box
from engine.dense.transfer import to_device
from engine.geo.grid_geometry import geod_of, on_globe
from engine.geo.ground import GroundScale, linear_unit_metres
from engine.geo.polygons import PolygonWriter
from engine.geo.rasters import NODATA, SCORE_MAX, TiledRaster, quantise
from engine.geo.source import RasterSource
from engine.geo.validity import BlockValidity


CPU_SCORING_ROWS = 128  # rows of a block scored at a time on a CPU (7 names × 128 rows × 1.1k px: ~4 MB)


def scored_block(segmenter, logits: torch.Tensor, confidence: bool, scores: bool) -> list[torch.Tensor]:
    """A block's mean logits [N, h, w] → its uint8 arrays on the same device: the class indices [h, w],
    then, when asked, the quantised confidence [h, w] and scores [C, h, w]. On a CPU it goes through
    the block in bands of `CPU_SCORING_ROWS` rows, so that the softmax's and the class steps'
    intermediate arrays stay in the cache instead of passing through memory a dozen times; the
    numbers are the same as in one pass, which an accelerator makes."""
    height = logits.shape[1]
    step = CPU_SCORING_ROWS if logits.device.type == "cpu" else height
    bands: list[list[torch.Tensor]] = []
    for top in range(0, height, step):
        band = logits[:, top:top + step]
        probs = segmenter.probabilities(band) if scores else None
        labels, best = segmenter.labels_and_best(band, with_best=confidence, probabilities=probs)
        bands.append([labels] + ([quantise(best)] if confidence else []) + ([quantise(probs)] if scores else []))
    return [parts[0] if len(parts) == 1 else torch.cat(parts, dim=-2) for parts in zip(*bands)]


def on_source_grid(source: RasterSource, core: Box, arrays: list[torch.Tensor], validity: BlockValidity,
                   n_classes: int) -> tuple[Box, list[torch.Tensor], torch.Tensor | None]:
    """A block's uint8 arrays [..., h, w] (class indices below `n_classes` first) on the working grid →
    (source-grid rectangle, the arrays there with no data where the source has none, pixel count per
    class value of the first [256] — None for an empty rectangle), computed on the arrays' device."""
    rect, arrays = source.put_back(core, validity, *arrays, fill=NODATA)
    if not (rect.h and rect.w):
        return rect, arrays, None
    return rect, arrays, class_counts(arrays[0], n_classes)


def class_counts(labels: torch.Tensor, n_classes: int, by_comparison: bool | None = None) -> torch.Tensor:
    """Pixels per class value [256] (int64, on the labels' device) of uint8 labels holding class
    indices below `n_classes` and NODATA. On a GPU (`by_comparison` default) one comparison and sum
    per value: torch.bincount would wait for the device (to learn the largest value) and a scatter
    into 256 bins serialises on its atomics (6 % of an H100's time in a run); on a CPU bincount of
    the uint8 values themselves is the fastest (2.2× faster than of their int64 copy)."""
    if by_comparison is None:
        by_comparison = labels.device.type != "cpu"
    if not by_comparison:
        return torch.bincount(labels.flatten(), minlength=256)
    values = list(range(n_classes)) + [NODATA]
    counts = torch.zeros(256, dtype=torch.int64, device=labels.device)
    counts[to_device(values, labels.device)] = torch.stack([(labels == v).sum() for v in values])
    return counts


class SegmentationProducts:
    """Class raster, optional score raster, polygons and per-class statistics of one run."""

    def __init__(self, source: RasterSource, work: Path, class_names: list[str], tags: dict[str, str],
                 colormap: dict[int, tuple], scores: bool, polygons: bool, simplify: float, min_area: float):
        self.source = source
        h, w, transform, crs = source.height, source.width, source.raster_transform, source.crs
        sensor = source.raster_sensor_model  # a raster placed by GCPs or RPCs only: its outputs carry them
        self.classes = TiledRaster(work / "classes.tif", h, w, 1, transform, crs, ["class"], tags, colormap,
                                   overviews="mode", sensor_model=sensor)
        self.scores = (TiledRaster(work / "scores.tif", h, w, len(class_names), transform, crs, class_names, tags,
                                   scale=1 / SCORE_MAX, overviews="average", sensor_model=sensor) if scores else None)
        self.row_area = row_pixel_area(source)
        # the tolerance is in working pixels: a class map made at a coarser GSD comes back on the source grid
        # in steps of several pixels, which a tolerance of source pixels would keep
        tolerance = simplify * max(1.0, source.grid.scale_x, source.grid.scale_y)
        self.polygons = (PolygonWriter(work / "polygons.gpkg", source.transform, crs, h, w, class_names, tolerance,
                                       min_area, self.row_area) if polygons else None)
        self.counts = np.zeros(256, dtype=np.int64)
        self.areas = None if self.row_area is None else np.zeros(256)

    def add(self, rect: Box, labels: np.ndarray, confidence: np.ndarray | None, scores: np.ndarray | None,
            counts: np.ndarray) -> None:
        """One block already on the source grid (`on_source_grid`): uint8 labels [h, w], confidence
        [h, w] (for the polygons) and scores [C, h, w], each None when not made, no data where the
        block is invalid, and its pixel count per class value [256]."""
        self.classes.write(rect, labels)
        if scores is not None:
            self.scores.write(rect, scores)
        self._count(rect, labels, counts)
        if self.polygons is not None:
            self.polygons.add_block(rect, labels, confidence)

    def _count(self, rect: Box, labels: np.ndarray, counts: np.ndarray) -> None:
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

    def release(self) -> None:
        """Close the files and end the polygon workers, whatever happened (an error, a cancel)."""
        self.close_rasters()
        if self.polygons is not None:
            self.polygons.stop()


def row_pixel_area(source: RasterSource) -> np.ndarray | None:
    """Area in m² of one source pixel on each row (rows differ on geographic CRSs, and on projections
    that distort areas: `engine.geo.ground`, at the row's centre; on a geographic CRS geodesic, on its own
    ellipsoid: `geod_of`), None without CRS: the true area of the pixel's parallelogram (|det| of the
    transform), so rotated grids count right."""
    crs, t = source.crs, source.transform
    if crs is None:
        return None
    if crs.is_geographic:
        from shapely.geometry import Polygon

        geod = geod_of(crs)  # the CRS's own ellipsoid (Mars 2000 on Mars)
        c = source.width / 2  # a pixel of the row's middle (rows run along parallels unless rotated)

        def corner(col: float, row: float) -> tuple[float, float]:
            x, y = t @ (col, row)
            return x, on_globe(y)

        areas = [abs(geod.geometry_area_perimeter(Polygon([corner(c, r), corner(c + 1, r), corner(c + 1, r + 1),
                                                           corner(c, r + 1)]))[0])
                 for r in range(source.height)]
        return np.asarray(areas)
    unit = linear_unit_metres(crs)
    planar = np.full(source.height, abs(t.a * t.e - t.b * t.d) * unit * unit)
    scale = GroundScale.of(crs, t, source.width, source.height)
    if scale is None:
        return planar
    xs, ys = t @ (np.full(source.height, source.width / 2), np.arange(source.height) + 0.5)
    return scale.ground_areas(planar, xs, ys)
