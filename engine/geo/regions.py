"""Reading regions of a raster as model-sized crops: boxes or polygons (region labelling), grid cells
(scene classification, text search).

A region is read as the model sees a whole image in stage 2: its box's shorter side resized to the
model's input size and the centre cropped square (read straight from the raster with GDAL's bilinear
resampling). Pixels outside a polygon, outside the raster, or without data, are filled with the CLIP
mean colour. A region's valid fraction (`region_valid_fraction`) is the share of its pixels — inside
the polygon for a polygon, the whole region, not only the crop — that hold data, pixels outside the
raster counting as no data; `engine.geo.scenes` gives no class to a region (or a cell) under half valid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from affine import Affine
from rasterio.features import geometry_mask
from rasterio.windows import Window

from engine.errors import InputError
from engine.geo.source import CLIP_MEAN_RGB, RasterSource

MAX_REGIONS = 512
VALID_SAMPLES = 256  # the longer side of the grid a region's valid pixels are counted on


@dataclass(frozen=True)
class Region:
    """A box (minx, miny, maxx, maxy) or a polygon ring [(x, y), ...], in pixel or raster CRS coordinates."""

    bbox: tuple[float, float, float, float] | None = None
    polygon: tuple[tuple[float, float], ...] | None = None


def to_pixel_geometry(source: RasterSource, region: Region, crs: str | None):
    """The region as a shapely geometry in the source area's pixel coordinates (col, row)."""
    import shapely
    from shapely import affinity

    if region.polygon is not None:
        if len(region.polygon) < 3:
            raise InputError("a polygon region needs at least 3 points")
        geom = shapely.Polygon(region.polygon)
    elif region.bbox is not None:
        minx, miny, maxx, maxy = region.bbox
        if not (maxx > minx and maxy > miny):
            raise InputError("a box region must be minx,miny,maxx,maxy with max > min")
        geom = shapely.box(minx, miny, maxx, maxy)
    else:
        raise InputError("a region needs a bbox or a polygon")
    if not geom.is_valid or geom.is_empty or geom.area <= 0:
        raise InputError("a region polygon is empty or self-intersecting")
    if crs == "pixel":
        return geom
    if crs is not None:
        geom = source.to_raster_crs(geom, crs, "regions", hint="; give them in pixel coordinates (crs 'pixel')")
    inverse = ~source.transform
    return affinity.affine_transform(geom, [inverse.a, inverse.b, inverse.d, inverse.e, inverse.xoff, inverse.yoff])


def read_region(source: RasterSource, pixel_geom, size: int) -> np.ndarray:
    """The region as an RGB crop [size, size, 3] (float 0-1), outside-polygon pixels mean-filled."""
    minx, miny, maxx, maxy = pixel_geom.bounds
    if maxx <= 0 or maxy <= 0 or minx >= source.width or miny >= source.height:
        raise InputError("a region lies outside the raster")
    w, h = maxx - minx, maxy - miny
    side = max(min(w, h), 1.0)
    cx, cy = (minx + maxx) / 2, (miny + maxy) / 2
    x0, y0 = cx - side / 2, cy - side / 2
    if x0 >= 0 and y0 >= 0 and x0 + side <= source.width and y0 + side <= source.height:
        rgb, valid = source.read_window(Window(source.window.col_off + x0, source.window.row_off + y0, side, side),
                                        size, size)
    else:  # the square crosses the raster's edge: read the part inside where it lies, no data around it
        rgb = np.empty((size, size, 3), dtype=np.float32)
        valid = np.zeros((size, size), dtype=bool)
        scale = size / side
        ix0, iy0 = max(x0, 0.0), max(y0, 0.0)
        ix1, iy1 = min(x0 + side, float(source.width)), min(y0 + side, float(source.height))
        c0, c1 = round((ix0 - x0) * scale), round((ix1 - x0) * scale)
        r0, r1 = round((iy0 - y0) * scale), round((iy1 - y0) * scale)
        if c1 > c0 and r1 > r0:
            part = Window(source.window.col_off + ix0, source.window.row_off + iy0, ix1 - ix0, iy1 - iy0)
            rgb[r0:r1, c0:c1], valid[r0:r1, c0:c1] = source.read_window(part, r1 - r0, c1 - c0)
    if not pixel_geom.equals(pixel_geom.envelope):
        to_window = Affine.translation(x0, y0) @ Affine.scale(side / size)
        outside = geometry_mask([pixel_geom], out_shape=(size, size), transform=to_window)
        rgb[outside] = CLIP_MEAN_RGB
    rgb[~valid] = CLIP_MEAN_RGB
    return rgb


def region_valid_fraction(source: RasterSource, pixel_geom) -> float:
    """Share of the region's pixels (those inside the polygon, for a polygon) that hold data; the part of
    the region outside the raster counts as no data. Counted on a grid of at most VALID_SAMPLES pixels a
    side over the region's part inside the raster (nearest-neighbour masks and values, as cells' are)."""
    import shapely

    if pixel_geom.area <= 0:
        return 0.0
    inside_raster = pixel_geom.intersection(shapely.box(0, 0, source.width, source.height))
    if inside_raster.is_empty or inside_raster.area <= 0:
        return 0.0
    minx, miny, maxx, maxy = inside_raster.bounds
    c0, r0 = max(0, math.floor(minx)), max(0, math.floor(miny))
    c1, r1 = min(source.width, math.ceil(maxx)), min(source.height, math.ceil(maxy))
    w, h = c1 - c0, r1 - r0
    step = max(1.0, max(w, h) / VALID_SAMPLES)
    out_w, out_h = max(1, round(w / step)), max(1, round(h / step))
    _, valid = source.read_raw(Window(source.window.col_off + c0, source.window.row_off + r0, w, h), out_h, out_w)
    to_window = Affine.translation(c0, r0) @ Affine.scale(w / out_w, h / out_h)
    inside = geometry_mask([inside_raster], out_shape=(out_h, out_w), transform=to_window, invert=True)
    if not inside.any():  # a sliver narrower than a sample: the samples it touches
        inside = geometry_mask([inside_raster], out_shape=(out_h, out_w), transform=to_window, invert=True,
                               all_touched=True)
    return min(1.0, float(valid[inside].mean()) * inside_raster.area / pixel_geom.area)


@dataclass(frozen=True)
class Cell:
    """A square on the ground: `size` source pixels wide and `size_y` tall (pixels that are not square
    on the ground make it a rectangle of pixels), at (x0, y0) of the source area."""

    row: int
    col: int
    x0: float  # source-area pixel coordinates
    y0: float
    size: float  # the square's side, in source columns
    size_y: float  # the square's side, in source rows
    w: float | None = None  # the part inside the raster, for an edge cell clipped to it
    h: float | None = None

    @property
    def width(self) -> float:
        return self.size if self.w is None else self.w

    @property
    def height(self) -> float:
        return self.size_y if self.h is None else self.h


CellSize = tuple[float, float]  # (source columns, source rows) of a cell


def grid_cells(source: RasterSource, cell_px: CellSize, stride_px: CellSize | None = None) -> list[Cell]:
    """Cells of `cell_px` source pixels covering the area (the last ones shifted inward)."""
    if min(cell_px) < 1:
        raise InputError("the cell is smaller than one pixel")
    stride = stride_px or cell_px
    fit = min(1.0, source.width / cell_px[0], source.height / cell_px[1])  # a raster smaller than a cell: one
    cell = (cell_px[0] * fit, cell_px[1] * fit)                            # cell as large as fits, still square

    def starts(length: float, side: float, step: float) -> list[float]:
        if length <= side:
            return [0.0]
        values = list(np.arange(0.0, length - side + 1e-9, step))
        if values[-1] + side < length - 1e-9:
            values.append(length - side)
        return values

    return [Cell(r, c, x, y, cell[0], cell[1])
            for r, y in enumerate(starts(source.height, cell[1], stride[1]))
            for c, x in enumerate(starts(source.width, cell[0], stride[0]))]


def tile_cells(source: RasterSource, cell_px: CellSize) -> list[Cell]:
    """Cells of `cell_px` source pixels tiling the area from its top-left corner, never overlapping;
    the last column and row are clipped to the raster (narrower or shorter cells)."""
    if min(cell_px) < 1:
        raise InputError("the cell is smaller than one pixel")
    size_x, size_y = cell_px

    def starts(length: int, side: float) -> list[float]:
        return list(np.arange(0.0, length - 1e-9, side))

    return [Cell(r, c, x, y, size_x, size_y, min(size_x, source.width - x), min(size_y, source.height - y))
            for r, y in enumerate(starts(source.height, size_y)) for c, x in enumerate(starts(source.width, size_x))]


def read_cells(source: RasterSource, cells: list[Cell], size: int) -> Iterator[tuple[Cell, np.ndarray, float]]:
    """(cell, RGB crop [size, size, 3], fraction of valid pixels) for each cell. A clipped edge cell is
    read at its square's scale into the crop's top-left part, the rest filled with the CLIP mean
    colour (the model sees ground at the same scale as in every other cell); its valid fraction
    counts the part inside the raster (and inside the area's mask, when it has one)."""
    for cell in cells:
        window = Window(source.window.col_off + cell.x0, source.window.row_off + cell.y0, cell.width, cell.height)
        whole = cell.width == cell.size and cell.height == cell.size_y
        h = size if whole else max(1, round(size * cell.height / cell.size_y))
        w = size if whole else max(1, round(size * cell.width / cell.size))
        part, valid = source.read_window(window, h, w)
        inside = source.window_inside_mask(window, h, w)
        fraction = float((valid if inside is None else valid & inside).mean())
        if whole:
            yield cell, part, fraction
            continue
        rgb = np.empty((size, size, 3), dtype=np.float32)
        rgb[:] = CLIP_MEAN_RGB
        rgb[:h, :w] = part
        yield cell, rgb, fraction
