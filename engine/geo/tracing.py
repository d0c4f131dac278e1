"""Tracing the one-class regions of a class-raster block as polygons: the costly, self-contained part of
writing polygons (`engine.geo.polygons`), in a module light enough (no torch) for worker processes.

Each block is split into 4-connected regions of one class (`scipy.ndimage.label`, the same
connectivity as `rasterio.features.shapes`), traced by GDAL, and returned with what the writer needs
to average the confidence and to merge regions across block borders.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

import numpy as np
import shapely
from affine import Affine
from rasterio.features import shapes
from scipy import ndimage

from engine.boxes import Box


@dataclass
class Regions:
    """A block's regions, one entry each: polygon (in the raster's coordinates), class value, summed
    confidence, pixel count, area (m², of its pixels: NaN without CRS) and whether it touches an inner
    block border. Arrays, so that the writer filters and writes them in a few vectorised steps; a
    worker process sends the polygons as WKB."""

    polygons: np.ndarray  # shapely polygons (object)
    classes: np.ndarray  # int64
    sums: np.ndarray  # float64
    pixels: np.ndarray  # int64
    areas: np.ndarray  # float64
    at_seam: np.ndarray  # bool

    def __getstate__(self) -> dict:
        return {**self.__dict__, "polygons": shapely.to_wkb(self.polygons)}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, polygons=shapely.from_wkb(state["polygons"]))

    def __len__(self) -> int:
        return len(self.polygons)

    @staticmethod
    def none() -> "Regions":
        return Regions(np.array([], dtype=object), np.array([], dtype=np.int64), np.array([], dtype=np.float64),
                       np.array([], dtype=np.int64), np.array([], dtype=np.float64), np.array([], dtype=bool))


def block_regions(core: Box, classes: np.ndarray, confidence: np.ndarray, transform: Affine, height: int,
                  width: int, nodata: int, row_area: np.ndarray | None = None) -> Regions:
    """The 4-connected one-class regions of a block of a height × width raster, as polygons in the
    raster's coordinates, each with its class, summed confidence, pixel count, area — the sum of its
    pixels' areas (`row_area`: m² of a pixel on each of the block's rows; None: NaN), so simplifying
    its outline never changes it — and whether it touches an inner block border (then it may continue
    in the next block)."""
    labels, owner = labelled(classes, nodata)
    return labelled_regions(core, labels, owner, confidence, transform, height, width, row_area)[0]


def labelled(classes: np.ndarray, nodata: int, regions_of_nodata: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The block's regions as a raster of region ids (from 1; 0: no data, unless `regions_of_nodata`, when
    no data makes regions too) and the class of each id."""
    labels = np.zeros(classes.shape, dtype=np.int32)
    owners = [np.array([nodata])]
    n_regions = 0
    present = np.bincount(classes.ravel(), minlength=256) > 0
    for value in np.flatnonzero(present):
        if value == nodata and not regions_of_nodata:
            continue
        mask = classes == value
        lab, n = ndimage.label(mask)
        np.add(lab, n_regions, out=labels, where=mask)
        owners.append(np.full(n, value))
        n_regions += n
    return labels, np.concatenate(owners)


def labelled_regions(core: Box, labels: np.ndarray, owner: np.ndarray, confidence: np.ndarray, transform: Affine,
                     height: int, width: int, row_area: np.ndarray | None) -> tuple[Regions, np.ndarray]:
    """`block_regions` of a block's region ids (`labelled`); and the id of each region."""
    if len(owner) == 1:
        return Regions.none(), np.array([], dtype=np.int64)
    sums = np.bincount(labels.ravel(), weights=confidence.ravel().astype(np.float64), minlength=len(owner))
    sizes = np.bincount(labels.ravel(), minlength=len(owner))
    if row_area is None:
        areas = np.full(len(owner), np.nan)
    elif (row_area == row_area[0]).all():  # a projected CRS: one pixel area (10× faster than weights)
        areas = sizes * float(row_area[0])
    else:
        areas = np.bincount(labels.ravel(), weights=np.broadcast_to(row_area[:, None], labels.shape).ravel(),
                            minlength=len(owner))
    seam = np.zeros(len(owner), dtype=bool)
    for inner, edge in ((core.y > 0, labels[0]), (core.y + core.h < height, labels[-1]),
                        (core.x > 0, labels[:, 0]), (core.x + core.w < width, labels[:, -1])):
        if inner:
            seam[edge] = True
    block_transform = transform @ Affine.translation(core.x, core.y)
    traced = list(shapes(labels, mask=labels > 0 if sizes[0] else None, connectivity=4, transform=block_transform))
    ids = np.array([value for _, value in traced], dtype=np.int64)
    polygons = polygons_from_geojson([geojson for geojson, _ in traced])
    return Regions(polygons, owner[ids].astype(np.int64), sums[ids], sizes[ids].astype(np.int64), areas[ids],
                   seam[ids]), ids


def polygons_from_geojson(geojsons: list[dict]) -> np.ndarray:
    """Shapely polygons (object array) of GeoJSON polygon mappings, built in one step from their
    coordinates (7× faster than one `shapely.geometry.shape` each, on a block of 30,000 regions)."""
    coords: list = []
    ring_ends, polygon_ends = [0], [0]
    for geojson in geojsons:
        for ring in geojson["coordinates"]:
            coords.extend(ring)
            ring_ends.append(len(coords))
        polygon_ends.append(len(ring_ends) - 1)
    if not geojsons:
        return np.array([], dtype=object)
    return shapely.from_ragged_array(shapely.GeometryType.POLYGON, np.asarray(coords, dtype=np.float64),
                                     (np.asarray(ring_ends), np.asarray(polygon_ends)))


def ignore_interrupts() -> None:
    """A worker process's start: Ctrl-C is the parent's to handle (no traceback from every worker)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
