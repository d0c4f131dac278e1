"""Reading a raster as RGB at a working resolution, window by window, with its validity mask.

- Any raster GDAL (through rasterio) opens; only the requested area (`window` / `bbox`) is used.
- Bands: `bands` (1-based) when given, else the bands whose colour interpretation is red/green/blue,
  else bands 1-3. A 4-band RGBN file therefore never feeds NIR as blue. A raster of one band with a
  colour table (and at most an alpha band beside it) is read as the red, green and blue its table
  gives (`engine.geo.palette`; `bands` then number those three); complex-valued rasters are refused.
- Georeference: a geotransform, or none (pixel space: x = column, y = -row, as QGIS draws such a
  raster), or a sensor model only (GCPs, RPCs: `engine.geo.sensor_model`) — then pixel space as well,
  and the outputs carry the same model (`raster_sensor_model`) instead of a geotransform.
- Values: uint8 is used as it is (0-255). Any other type gets one linear stretch for the whole
  raster: per band, the 2nd-98th percentiles of the valid pixels of a decimated read (GDAL uses the
  overviews when present) map to 0-1. Never per tile, so tiles match.
- Validity: GDAL's per-band masks (nodata, alpha band, internal masks) of the chosen bands, and on
  floating-point rasters every NaN or ±inf pixel (whatever nodata value the file declares); `nodata`
  (--nodata) adds a value that is no data where every chosen band holds it (as GDAL's NODATA_VALUES).
- Notes (`notes`, one line each, for the user): the bands used when they were guessed (no colour
  interpretation), and a warning when a large edge frame of one constant value borders a raster
  that declares no nodata (`engine.geo.frames`).
  Invalid pixels are filled with the CLIP mean colour and get no prediction.
- Working resolution: `gsd` metres per pixel (resampled on read, bilinear); default
  max(native GSD, DEFAULT_GSD). Windows at fractional source offsets are read with GDAL's
  resampling, which gives the same pixels whether the raster is read whole or in pieces.
"""

from __future__ import annotations

import functools
import math
import os
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from engine.boxes import Box
from engine.errors import InputError, first_line
from engine.geo.bands import bands_named_rgb
from engine.geo.grid_geometry import bounds_of, format_coordinate, pixel_metres
from engine.geo.opening import open_raster, subdatasets_message
from engine.geo.palette import PaletteRGB, palette_rgb_vrt
from engine.geo.raster_names import is_gdal_name, raster_exists
from engine.geo.sensor_model import SensorModel
from engine.geo.validity import BlockValidity, filled
from engine.geo.vectors import refuse_far_coordinates

DEFAULT_GSD = 0.5  # metres per pixel; see README "Working resolution"
STRETCH_PERCENTILES = (2.0, 98.0)
_STATS_MAX_SIDE = 1024
_CHEAP_READ_PIXELS = 4096 * 4096  # an area read whole in well under a second
CLIP_MEAN_RGB = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
PIXEL_SPACE = Affine(1.0, 0.0, 0.0, 0.0, -1.0, 0.0)  # QGIS's frame for a raster without geotransform


def parse_numbers(text: str, count: int, what: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"{what} takes {count} comma-separated numbers, got '{text}'") from None
    if len(values) != count:
        raise InputError(f"{what} takes {count} comma-separated numbers, got '{text}'")
    return values


def parse_window(text: str, what: str = "--window") -> tuple[int, int, int, int]:
    """col,row,width,height in whole source pixels (a fractional value is refused, not truncated)."""
    values = parse_numbers(text, 4, what)
    if not all(math.isfinite(v) and v == int(v) for v in values):
        raise InputError(f"{what} takes whole pixels: col,row,width,height, got '{text}'")
    return tuple(int(v) for v in values)  # type: ignore[return-value]


MAX_GRID_SIDE = 2**31 - 1  # GDAL's raster size limit
SQUARE_TOLERANCE = 0.01  # pixel sides within 1 % of each other on the ground: square pixels
_VALIDITY_CHUNK_PIXELS = 2**22  # source pixels whose no data is read at a time
# the finest working grid, in working pixels per source pixel side (a 10 m Sentinel-2 pixel seen at
# 0.3 m is 33×): finer only multiplies the work (a stray --gsd 3e-05 on 0.5 m pixels meant 16,667×,
# 2.8·10¹⁴ working pixels, and memory ran out before the first block)
MAX_UPSAMPLING = 64
LATITUDE_SLACK = 0.01  # degrees past a pole still taken as the pole (rounding in a global grid's corners)


@dataclass(frozen=True)
class WorkingGrid:
    """The grid the model sees: the source area resampled to `height` × `width` pixels."""

    height: int
    width: int
    scale_y: float  # source pixels per working pixel
    scale_x: float

    @property
    def resampled(self) -> bool:
        return self.scale_x != 1.0 or self.scale_y != 1.0


TINY_GRID = 32  # a working grid whose longer side is under this many pixels gets a warning


class RasterSource:
    """An open raster area ready to be read as RGB at the working resolution."""

    def __init__(self, path: str | Path, bands: tuple[int, int, int] | None = None, gsd: float | None = None,
                 window: tuple[int, int, int, int] | None = None,
                 bbox: tuple[float, float, float, float] | None = None, bbox_crs: str | None = None,
                 nodata: float | None = None, inspect_pixels: bool = True, frame_from_reads: bool = False,
                 mask_wkt: str | None = None, mask_crs: str | None = None):
        """`mask_wkt`: only pixels inside this (Multi)Polygon, in `mask_crs` (default: the raster's), are
        valid (`restrict_to`). `inspect_pixels` False: the area and grid only, for checks before a run — no decimated
        read of the whole area, so no contrast stretch (pixels read unstretched) and no notes on it.
        `frame_from_reads`: for a run that reads every pixel of the working grid with `read_pixels`;
        a uint8 raster (no stretch to compute) is not read beforehand for the edge-frame check, which
        `check_frame_from_reads` makes afterwards from the pixels read (of any size: a large raster
        without overviews is otherwise not checked)."""
        self.path = str(path)
        self.inspect_pixels = inspect_pixels
        self._frame_sample = None  # a FrameSample while the check waits for the reads
        self._owner, self._local = threading.get_ident(), threading.local()  # see _handle
        self._handles: list = []
        self._handles_lock = threading.Lock()
        self.nodata = None if nodata is None else float(nodata)
        self.notes: list[str] = []  # one line each, for the user: the choices made for this raster
        self.mask_geometry = None  # (Multi)Polygon in the raster's CRS: only pixels inside are valid
        if not raster_exists(self.path):
            raise InputError(f"input raster not found: {self.path}")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", rasterio.errors.NotGeoreferencedWarning)
                self.dataset = open_raster(self.path)
                dataset_transform = self.dataset.transform
        except RasterioIOError:
            if Path(self.path).is_dir():  # (GDAL reads some folders: a .SAFE, an ESRI grid; not this one)
                raise InputError(f"{self.path} is a folder, not a raster GDAL can read: name the rasters in it "
                                 f"(e.g. {Path(self.path) / '*.tif'})") from None
            raise InputError(f"{self.path} is not a raster GDAL can read") from None
        try:
            # GCPs or RPCs without a geotransform: the engine works in pixel space, the outputs carry them
            self.sensor_model = SensorModel.of(self.dataset, dataset_transform)
            # GDAL has no geotransform for it (a PNG tile, a plain TIFF): QGIS draws such a raster with
            # x = column and y = -row, so that is its pixel space here too (bbox, masks, polygons)
            self.georeferenced = (self.sensor_model is None and not any(
                issubclass(w.category, rasterio.errors.NotGeoreferencedWarning) for w in caught))
            self.dataset_transform = dataset_transform if self.georeferenced else PIXEL_SPACE
            self.crs = None if self.sensor_model is not None else self.dataset.crs  # (a GCP raster's: the GCPs')
            mask = _mask_polygons(mask_wkt) if mask_wkt else None
            if mask is not None and window is None and bbox is None:  # only the mask's bounding box is read
                self._setup(bands, gsd, None, mask.bounds, mask_crs, frame_from_reads, "the mask")
            else:
                self._setup(bands, gsd, window, bbox, bbox_crs, frame_from_reads)
            if mask is not None:
                self.restrict_to(mask, mask_crs)
        except Exception:
            self.dataset.close()
            raise

    def _setup(self, bands, gsd, window, bbox, bbox_crs, frame_from_reads, bbox_is: str = "bbox") -> None:
        ds = self.dataset
        if ds.count < 1 and ds.subdatasets:
            raise InputError(subdatasets_message(Path(self.path).name, ds.subdatasets))
        if ds.count < 1 or ds.width < 1 or ds.height < 1:
            raise InputError(f"{self.path} holds no pixels")
        complex_types = sorted({t for t in ds.dtypes if t.startswith("complex")})  # complex_int16: no numpy type
        if complex_types:
            raise InputError(f"{Path(self.path).name} holds complex values ({', '.join(complex_types)}), not an image "
                             f"to segment: convert it to real values first (e.g. its amplitude)")
        self.palette = self._open_palette()
        ds = self.dataset  # the colour table's R, G, B for a palette raster
        if self.sensor_model is not None:
            self.notes.append(f"{Path(self.path).name} is georeferenced by {self.sensor_model.what} only (no "
                              f"geotransform): the outputs carry the same, so GIS software places them as it "
                              f"places the raster; polygons are in pixel space (x = column, y = -row) and areas "
                              f"are not computed")
        if self.crs is None and self.sensor_model is None:
            name = Path(self.path).name
            self.notes.append(f"warning: {name} has no CRS that GDAL reads (a .prj beside a PNG or JPEG with a world "
                              f"file is not read): its geotransform is kept in the outputs, without a CRS; its pixel "
                              f"size in metres is unknown, so its native pixels are used and areas are not computed "
                              f"(give the file a CRS, e.g. gdal_edit.py -a_srs EPSG:32633, to have both)"
                              if self.georeferenced else
                              f"warning: {name} has no CRS and no geotransform: the outputs are in its pixel space "
                              f"(x = column, y = -row, as QGIS shows it) and areas are not computed")
        self.bands = self._choose_bands(bands)
        self.window = self._choose_window(window, bbox, bbox_crs, bbox_is)
        self.transform = self.dataset_transform @ Affine.translation(self.window.col_off, self.window.row_off)
        self.height, self.width = int(self.window.height), int(self.window.width)
        self._check_latitudes()
        sides = pixel_metres(self.crs, self.transform, self.width, self.height)
        if sides is not None and abs(sides[0] / sides[1] - 1.0) <= SQUARE_TOLERANCE:  # square: one size
            sides = ((sides[0] + sides[1]) / 2,) * 2
        self.pixel_sides_m = sides  # (along a row, along a column), metres on the ground
        self.source_gsd = None if sides is None else (sides[0] + sides[1]) / 2
        self.working_gsd, self.grid = self._working_grid(gsd)
        if gsd is not None and max(self.grid.height, self.grid.width) < TINY_GRID:
            self.notes.append(f"warning: at a working resolution of {gsd:g} m the area is {self.grid.width} × "
                              f"{self.grid.height} working pixels: the model sees next to nothing of it (it reads "
                              f"224 px crops); choose a resolution nearer the raster's own"
                              + (f" {self.source_gsd:.3g} m" if self.source_gsd else ""))
        self.floating = any(np.dtype(ds.dtypes[b - 1]).kind in "fc" for b in self.bands)
        needs_stretch = ds.dtypes[self.bands[0] - 1] != "uint8" and self.palette is None
        cheap = self.height * self.width <= _CHEAP_READ_PIXELS or bool(ds.overviews(self.bands[0]))
        overview = None
        if self.inspect_pixels:  # a truncated GeoTIFF is named so (its tile index) before pixels are decoded
            for rect in self._corners():
                self._tiles_in_file(rect)
        if self.inspect_pixels and frame_from_reads and not needs_stretch:
            from engine.geo.frames import FrameSample

            self._frame_sample = FrameSample(self.grid.height, self.grid.width, 3)
        elif self.inspect_pixels and (needs_stretch or cheap):
            overview = self._overview_read()
        self.stretch = self._stretch(*overview) if needs_stretch and overview is not None else None
        if overview is not None:  # (a large uint8 raster without overviews is not read whole for this)
            self._check_edge_frame(overview[0])

    def _check_latitudes(self) -> None:
        """A raster in a geographic CRS must lie within ±90° latitude (a hundredth of a degree over is
        taken as the pole; areas are measured there): else its georeference is wrong — an image given
        EPSG:4326 without a geotransform, whose rows then run to -300°."""
        if self.crs is None or not self.crs.is_geographic:
            return
        _, south, _, north = bounds_of(self.transform, self.width, self.height)
        if south < -90 - LATITUDE_SLACK or north > 90 + LATITUDE_SLACK:
            reached = format_coordinate(south if south < -90 else north)
            raise InputError(f"{Path(self.path).name} reaches latitude {reached}° in its geographic CRS "
                             f"({self.crs.to_string()}), beyond ±90°: its georeference is wrong (a CRS without a "
                             f"geotransform?); correct it, e.g. with gdal_edit.py")

    def _open_palette(self) -> "PaletteRGB | None":
        """For a one-band raster with a colour table: open it as the RGB its colour table gives (a
        VRT, `palette_rgb_vrt`), which `self.dataset` becomes; None for any other raster."""
        palette = palette_rgb_vrt(self.dataset, self.path)
        if palette is None:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            try:
                expanded = rasterio.open(palette.xml)
            except RasterioIOError as exc:
                raise InputError(f"cannot read the colour table of {Path(self.path).name}: {first_line(exc)}") from None
        self.dataset.close()  # its georeference is kept above; the pixels are read through the VRT
        self.dataset = expanded
        self.notes.append(f"{Path(self.path).name}: colours from the raster's colour table (its band holds "
                          f"palette indices)" + ("; transparent and nodata entries are no data"
                                                 if palette.has_invalid else "")
                          + ("; pixels its alpha band or mask leaves out are no data" if palette.masked else ""))
        return palette

    # --- choices -------------------------------------------------------------------------------
    def _choose_bands(self, bands) -> tuple[int, int, int]:
        ds = self.dataset
        if bands is not None:
            bad = [b for b in bands if not 1 <= b <= ds.count]
            if bad and self.palette is not None:
                raise InputError(f"band {bad[0]} does not exist: {Path(self.path).name} is a palette raster, read "
                                 f"as the red, green and blue (bands 1, 2, 3) of its colour table")
            if bad:
                raise InputError(f"band {bad[0]} does not exist: {Path(self.path).name} has {ds.count} band(s)")
            return tuple(bands)  # type: ignore[return-value]
        interp = list(ds.colorinterp)
        if all(c in interp for c in (ColorInterp.red, ColorInterp.green, ColorInterp.blue)):
            return (interp.index(ColorInterp.red) + 1, interp.index(ColorInterp.green) + 1,
                    interp.index(ColorInterp.blue) + 1)
        named = bands_named_rgb(ds.descriptions)
        if named is not None:
            self.notes.append(f"{Path(self.path).name}: no red/green/blue colour interpretation; bands "
                              f"{','.join(map(str, named))} used as red, green, blue, as their descriptions say "
                              f"(--bands chooses others)")
            return named
        colour_bands = [i + 1 for i, c in enumerate(interp) if c not in (ColorInterp.alpha,)]
        if len(colour_bands) < 3:
            raise InputError(f"{Path(self.path).name} has {len(colour_bands)} colour band(s); an RGB model "
                             f"needs 3: pass --bands (e.g. --bands 1,1,1 for a single-band image)")
        chosen = tuple(colour_bands[:3])
        self.notes.append(f"{Path(self.path).name}: no red/green/blue colour interpretation; bands "
                          f"{','.join(map(str, chosen))} of {ds.count} used as red, green, blue "
                          f"(--bands chooses others)")
        return chosen  # type: ignore[return-value]

    def _choose_window(self, window, bbox, bbox_crs, bbox_is: str = "bbox") -> Window:
        """The pixels of the area: `window`, else under `bbox` (`bbox_is`: what it is, for messages)."""
        ds = self.dataset
        full = Window(0, 0, ds.width, ds.height)
        if window is not None and bbox is not None:
            raise InputError("give either a window or a bbox, not both")
        if window is not None:
            col, row, w, h = window
            if w < 1 or h < 1:
                raise InputError("window width and height must be at least 1 pixel")
            inside, clipped = self._inside(col, row, col + w, row + h)
            if inside is None:
                raise InputError(f"window {col},{row},{w},{h} lies outside the raster ({ds.width} x {ds.height} px)")
            if clipped:
                self.notes.append(f"window {col},{row},{w},{h} reaches beyond the raster ({ds.width} x {ds.height} "
                                  f"px): its part inside, {inside.col_off},{inside.row_off},{inside.width},"
                                  f"{inside.height}, is processed")
            return inside
        if bbox is None:
            return full
        minx, miny, maxx, maxy = bbox
        if not (maxx > minx and maxy > miny):
            raise InputError("bbox must be minx,miny,maxx,maxy with max > min")
        window, clipped = self._bbox_window(bbox, bbox_crs)
        if window is None:
            b = bounds_of(self.dataset_transform, ds.width, ds.height)
            space = (f"pixel space, x = column, y = -row: the raster is georeferenced by {self.sensor_model.what} "
                     f"only" if self.sensor_model is not None else "pixel space: x = column, y = -row, as QGIS shows it")
            raise InputError(f"{bbox_is} lies outside the raster (raster bounds {','.join(map(format_coordinate, b))} "
                             f"in {self.crs or space}){self._swapped_bbox_hint(bbox, bbox_crs)}")
        if clipped:
            self.notes.append(f"{bbox_is} reaches beyond the raster: its part inside, pixels {window.col_off},"
                              f"{window.row_off},{window.width},{window.height} of {ds.width} x {ds.height}, is "
                              f"processed")
        return window

    def _bbox_window(self, bbox, bbox_crs) -> tuple[Window | None, bool]:
        """The raster's pixels under a bbox (in `bbox_crs`, default the raster's; None when none) and
        whether the bbox reaches beyond them."""
        minx, miny, maxx, maxy = bbox
        if bbox_crs is not None:
            from rasterio.warp import transform_bounds

            src_crs = self.user_crs(bbox_crs, "a bbox")
            minx, miny, maxx, maxy = transform_bounds(src_crs, self.crs, minx, miny, maxx, maxy)
        if self.crs is not None and self.crs.is_geographic:
            minx, maxx = self._same_longitudes(minx, maxx)
        inverse = ~self.dataset_transform  # the pixels under the box's corners (any rotation or flip)
        cols, rows = zip(*(inverse @ (x, y) for x in (minx, maxx) for y in (miny, maxy)))
        if not all(map(math.isfinite, cols + rows)):
            return None, False
        # a box on pixel edges given in another CRS comes back ~1e-8 px off them from the round trip
        # (4326 -> 3857 at 0.3 m: 3e-9 px): a millionth of a pixel is taken as on the edge
        return self._inside(math.floor(min(cols) + 1e-6), math.floor(min(rows) + 1e-6),
                            math.ceil(max(cols) - 1e-6), math.ceil(max(rows) - 1e-6))

    def _same_longitudes(self, minx: float, maxx: float) -> tuple[float, float]:
        """A longitude range as this geographic raster counts them: one across the antimeridian (min > max,
        as reprojection gives it) made continuous, and shifted by 360° where the raster's longitudes run
        past ±180 (a raster from 179.99° to 180.01°, a 0–360° grid)."""
        if maxx < minx:
            maxx += 360.0
        left, _, right, _ = bounds_of(self.dataset_transform, self.dataset.width, self.dataset.height)

        def overlap(shift: float) -> float:
            return min(maxx + shift, right) - max(minx + shift, left)

        shift = max((0.0, -360.0, 360.0), key=overlap)  # no shift unless another overlaps more
        return minx + shift, maxx + shift

    def _inside(self, col0: int, row0: int, col1: int, row1: int) -> tuple[Window | None, bool]:
        """The raster's part of a pixel rectangle (None when it has none), and whether it was cut."""
        ds = self.dataset
        inside = (max(0, col0), max(0, row0), min(ds.width, col1), min(ds.height, row1))
        if inside[2] <= inside[0] or inside[3] <= inside[1]:
            return None, False
        return (Window(inside[0], inside[1], inside[2] - inside[0], inside[3] - inside[1]),
                inside != (col0, row0, col1, row1))

    def _swapped_bbox_hint(self, bbox, bbox_crs) -> str:
        """For a bbox in geographic coordinates that misses the raster: a hint when the same numbers
        with latitude and longitude swapped would hit it."""
        given = self.user_crs(bbox_crs, "a bbox") if bbox_crs is not None else self.crs
        if given is None or not given.is_geographic:
            return ""
        minx, miny, maxx, maxy = bbox
        if not (-90 <= minx <= maxx <= 90):  # the swapped box's latitudes must be latitudes
            return ""
        try:
            with rasterio.Env():  # (GDAL's own messages stay out of the user's terminal)
                hit = self._bbox_window((miny, minx, maxy, maxx), bbox_crs)[0] is not None
        except Exception:
            return ""
        if not hit:
            return ""
        return (f" (did you swap latitude and longitude? a bbox in {given.to_string()} is given lon,lat: min lon, "
                f"min lat, max lon, max lat; here {','.join(map(format_coordinate, (miny, minx, maxy, maxx)))})")

    def _working_grid(self, gsd: float | None) -> tuple[float | None, WorkingGrid]:
        """Square working pixels of `gsd` metres on the ground; by default the source's (for pixels that
        are not square the geometric mean of their sides: as many pixels as the source), but not finer
        than DEFAULT_GSD."""
        native = None if self.pixel_sides_m is None else math.sqrt(self.pixel_sides_m[0] * self.pixel_sides_m[1])
        if gsd is not None:
            if not (gsd > 0 and math.isfinite(gsd)):
                raise InputError("--gsd must be a positive number of metres per pixel")
            if native is None and self.sensor_model is not None:
                raise InputError(f"--gsd needs a geotransform; {Path(self.path).name} is georeferenced by "
                                 f"{self.sensor_model.what} only (its native pixels are used without --gsd)")
            if native is None:
                raise InputError("--gsd needs a geo-referenced raster; this one has no CRS")
            target = gsd
        else:
            target = max(native, DEFAULT_GSD) if native is not None else None
        if target is None:
            return None, WorkingGrid(self.height, self.width, 1.0, 1.0)
        factor_x, factor_y = (target / side for side in self.pixel_sides_m)  # source pixels per working pixel
        if abs(factor_x - 1.0) < 1e-6 and abs(factor_y - 1.0) < 1e-6:
            return target, WorkingGrid(self.height, self.width, 1.0, 1.0)
        if factor_x != factor_y:
            x, y = self.pixel_sides_m
            self.notes.append(f"{Path(self.path).name}: pixels are {x:.3g} × {y:.3g} m on the ground, not square: "
                              f"read as square {target:.3g} m pixels, so that shapes are not stretched")
        factor, coarse = min(factor_x, factor_y), max(self.pixel_sides_m)  # (the most up-sampled side)
        if factor < 1 / MAX_UPSAMPLING:
            raise InputError(f"--gsd {target:g} m/px is {1 / factor:,.0f}× finer than the raster's {coarse:.3g} m "
                             f"pixels (at most {MAX_UPSAMPLING}× is allowed: the model sees nothing new below the "
                             f"raster's own resolution): choose a gsd of at least {coarse / MAX_UPSAMPLING:.3g} m")
        if max(self.width, self.height) / factor > MAX_GRID_SIDE:
            raise InputError(f"--gsd {target:g} m/px would make the working grid over {MAX_GRID_SIDE:,} pixels a "
                             f"side (the limit; the raster's pixels are {coarse:.3g} m): choose a coarser gsd")
        width = max(1, round(self.width / factor_x))
        height = max(1, round(self.height / factor_y))
        return target, WorkingGrid(height, width, self.height / height, self.width / width)

    def _overview_read(self) -> tuple[np.ndarray, np.ndarray]:
        """The chosen bands of the whole area, decimated to at most _STATS_MAX_SIDE pixels a side (GDAL
        uses overviews when present), and their validity [3, h, w] (each band's mask, NaN, --nodata)."""
        long_side = max(self.height, self.width)
        factor = max(1.0, long_side / _STATS_MAX_SIDE)
        shape = (max(1, round(self.height / factor)), max(1, round(self.width / factor)))
        with self._reading():
            data = self.dataset.read(self.bands, window=self.window, out_shape=(3, *shape),
                                     resampling=Resampling.nearest)
            valid = self.dataset.read_masks(self.bands, window=self.window, out_shape=(3, *shape),
                                            resampling=Resampling.nearest) > 0
        return data, valid & self._value_valid(data)[None]

    def _value_valid(self, data: np.ndarray) -> np.ndarray:
        """Validity [h, w] from the values of the chosen bands [3, h, w]: NaN/±inf in any band, or
        --nodata in every band (as GDAL's NODATA_VALUES), are no data."""
        valid = np.ones(data.shape[1:], dtype=bool)
        if self.floating:
            valid &= np.isfinite(data).all(axis=0)
        if self.nodata is not None:
            with np.errstate(over="ignore"):  # a value the type cannot hold (1e40 on float32) matches nothing
                valid &= ~(data == self.nodata).all(axis=0)
        return valid

    def check_frame_from_reads(self) -> None:
        """The edge-frame check of a `frame_from_reads` source, once every pixel has been read."""
        sample, self._frame_sample = self._frame_sample, None
        if sample is not None and sample.complete:
            self._check_edge_frame(sample.data)

    def _check_edge_frame(self, data: np.ndarray) -> None:
        """A note when a large frame of one constant value borders a raster that declares no data."""
        from engine.geo.frames import LARGE_FRAME, edge_frame

        if self.nodata is not None or not self._masks_all_valid:
            return
        value, fraction = edge_frame(data)
        if value is None or fraction < LARGE_FRAME:
            return
        name = Path(self.path).name
        if len(set(value)) == 1:
            self.notes.append(f"warning: {fraction:.0%} of {name} is an edge frame of value "
                              f"{format_coordinate(value[0])} and the file declares no nodata: it is classified "
                              f"and skews the contrast stretch; pass --nodata {format_coordinate(value[0])} if it "
                              f"is no data")
        else:  # --nodata is one value for every band: it cannot name this frame
            every_band = self.palette is None and list(self.bands) == list(range(1, self.dataset.count + 1))
            values = " ".join(map(format_coordinate, value)) if every_band else "v1 v2 …"  # one for each band
            self.notes.append(f"warning: {fraction:.0%} of {name} is an edge frame of values "
                              f"{','.join(map(format_coordinate, value))} (bands {','.join(map(str, self.bands))}) "
                              f"and the file declares no nodata: it is classified and skews the contrast stretch; "
                              f"if it is no data, give the file a mask or alpha band for it (e.g. gdalwarp "
                              f"-srcnodata \"{values}\" -wo UNIFIED_SRC_NODATA=YES -dstalpha) or leave it out "
                              f"with --bbox")

    def _stretch(self, data: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """[3, 2] (low, high) per chosen band, from the decimated read of the whole area."""
        data = data.astype(np.float64)
        valid = valid & np.isfinite(data)
        lows_highs = []
        for band, ok in zip(data, valid):
            values = band[ok]
            if values.size == 0:
                lows_highs.append((0.0, 1.0))
                continue
            with np.errstate(over="ignore", invalid="ignore"):
                lo, hi = np.percentile(values, STRETCH_PERCENTILES)
            if not np.isfinite([lo, hi]).all():  # interpolating between values ±1e308 apart overflows
                lo, hi = np.percentile(values, STRETCH_PERCENTILES, method="nearest")
            lo, hi = float(lo), float(hi)
            if not hi > lo:  # one value: a span float64 can add to it (1.0 is lost on 1e17 and above)
                span = max(1.0, abs(lo) * 1e-9)
                lo, hi = (lo, lo + span) if np.isfinite(lo + span) else (lo - span, lo)
            lows_highs.append((lo, hi))
        return np.array(lows_highs)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(minx, miny, maxx, maxy) of the area in the raster's CRS (pixel space without one)."""
        return bounds_of(self.transform, self.width, self.height)

    @property
    def raster_transform(self) -> Affine | None:
        """The geotransform to give outputs on the area's grid: None (none at all, like the input) for
        a whole raster without geo-reference, so that they overlay it in QGIS and GDAL tools alike."""
        if not self.georeferenced and self.window.col_off == 0 and self.window.row_off == 0:
            return None
        return self.transform

    @property
    def raster_sensor_model(self) -> SensorModel | None:
        """The sensor model (GCPs, RPCs) to give outputs on the area's grid instead of a geotransform,
        for a raster georeferenced by one only: the input's, moved by the area's offset."""
        if self.sensor_model is None:
            return None
        return self.sensor_model.moved(self.window.col_off, self.window.row_off)

    # --- reading -------------------------------------------------------------------------------
    def working_transform(self) -> Affine:
        return self.transform @ Affine.scale(self.grid.scale_x, self.grid.scale_y)

    def source_rect(self, core: Box) -> Box:
        """The rectangle of the source grid whose pixels' centres lie in a working-grid block."""
        if not self.grid.resampled:
            return core
        rows, cols = self._source_to_working()
        r0, r1 = np.searchsorted(rows, [core.y, core.y + core.h])
        c0, c1 = np.searchsorted(cols, [core.x, core.x + core.w])
        return Box(int(r0), int(c0), int(r1 - r0), int(c1 - c0))

    def to_source_grid(self, core: Box, *arrays):
        """Working-grid block → (source-grid rectangle, the arrays [..., h, w] on it), nearest
        neighbour: each source pixel takes the working pixel under its centre. The rectangles of a
        partition of the working grid partition the source grid, so blocks go back one by one.
        numpy arrays or torch tensors (indexed on their device; this module itself stays free of
        torch, as the readers of a batch run import it)."""
        if not self.grid.resampled:
            return core, list(arrays)
        rows, cols = self._source_to_working()
        rect = self.source_rect(core)
        take_r, take_c = rows[rect.y:rect.y + rect.h] - core.y, cols[rect.x:rect.x + rect.w] - core.x
        if arrays and not isinstance(arrays[0], np.ndarray):  # torch tensors
            from engine.dense.transfer import to_device

            device = arrays[0].device
            index_r, index_c = to_device(take_r.tolist(), device), to_device(take_c.tolist(), device)
            return rect, [a.index_select(-2, index_r).index_select(-1, index_c) for a in arrays]
        return rect, [a.take(take_r, axis=-2).take(take_c, axis=-1) for a in arrays]

    def _source_to_working(self) -> tuple[np.ndarray, np.ndarray]:
        """For each source row and column, the working row and column under its centre (non-decreasing)."""
        if getattr(self, "_nearest", None) is None:
            g = self.grid
            rows = np.minimum(((np.arange(self.height) + 0.5) / g.scale_y).astype(np.int64), g.height - 1)
            cols = np.minimum(((np.arange(self.width) + 0.5) / g.scale_x).astype(np.int64), g.width - 1)
            self._nearest = rows, cols
        return self._nearest

    def source_window(self, rect: Box) -> Window:
        """The source window (fractional when resampled) under a working-grid rectangle."""
        g = self.grid
        return Window(self.window.col_off + rect.x * g.scale_x, self.window.row_off + rect.y * g.scale_y,
                      rect.w * g.scale_x, rect.h * g.scale_y)

    def read_rgb(self, rect: Box) -> tuple[np.ndarray, np.ndarray]:
        """RGB float32 [h, w, 3] in 0-1 and a validity mask [h, w] for a working-grid rectangle."""
        return self.read_window(self.source_window(rect), rect.h, rect.w)

    def read_pixels(self, rect: Box) -> tuple[np.ndarray, np.ndarray]:
        """RGB [3, h, w] as the model takes it — uint8 (0-255) for uint8 rasters, else float32 0-1
        after the stretch — and validity [h, w] of a working-grid rectangle. Invalid pixels keep
        whatever value they hold: `engine.dense.sliding.normalise` blanks them on the device."""
        pixels, valid = self.read_raw(self.source_window(rect), rect.h, rect.w)
        sample = self._frame_sample
        if sample is not None and pixels.dtype == np.uint8:
            sample.add(rect, pixels)
        return pixels, valid

    def read_window(self, window: Window, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """RGB float32 [height, width, 3] in 0-1 and validity [height, width] of a source window
        (fractional allowed), resampled bilinearly when its size differs from the output's; invalid
        pixels hold the CLIP mean colour."""
        pixels, valid = self.read_raw(window, height, width)
        rgb = pixels.astype(np.float32) / 255.0 if pixels.dtype == np.uint8 else pixels
        rgb = np.ascontiguousarray(rgb.transpose(1, 2, 0))
        rgb[~valid] = CLIP_MEAN_RGB
        return rgb, valid

    def read_raw(self, window: Window, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """`read_pixels` of a source window (see `read_window`)."""
        same_size = abs(window.width - width) < 1e-9 and abs(window.height - height) < 1e-9
        resampling = Resampling.nearest if same_size else Resampling.bilinear
        with self._reading():
            data = self._handle().read(self.bands, window=window, out_shape=(3, height, width), resampling=resampling)
        valid = self._mask_valid(window, height, width)
        if self.floating or self.nodata is not None:  # values decide on the unresampled pixels
            exact = data if same_size else self._read_nearest(window, height, width)
            valid &= self._value_valid(exact)
        if self.palette is not None:  # the colour table's 0-255 (PALETTE_NODATA where no data)
            return np.minimum(data, 255).astype(np.uint8), valid
        if self.stretch is None:  # uint8 (a mixed-type band set comes back widened: scale it the same way)
            return (data, valid) if data.dtype == np.uint8 else (data.astype(np.float32) / 255.0, valid)
        lo, hi = self.stretch[:, 0, None, None], self.stretch[:, 1, None, None]
        data = data.astype(np.float64)
        valid &= np.isfinite(data).all(axis=0)
        # clipped before scaling: a value far outside the stretch (a nodata of -3.4e38) neither
        # overflows float32 nor the division
        with np.errstate(over="ignore"):
            span_fits = np.isfinite(hi - lo).all()
        if span_fits:
            rgb = ((np.clip(data, lo, hi) - lo) / (hi - lo)).astype(np.float32)
        else:  # a stretch wider than float64 holds (values of ±1e308): the same in halves, exactly
            rgb = ((np.clip(data, lo, hi) * 0.5 - lo * 0.5) / (hi * 0.5 - lo * 0.5)).astype(np.float32)
        return np.nan_to_num(rgb, nan=0.0), valid

    def probe(self) -> None:
        """Catch truncated and corrupt files before a run: the area's first and last pixels must be
        readable. Where the file's own tile index tells where their tiles lie (a GeoTIFF on disk), a
        tile ending past the end of the file is reported without decoding anything — so checking a
        request costs no tile decoding (3-4 ms a 512 px tile); otherwise the two pixels are read."""
        for rect in self._corners():
            if not self._tiles_in_file(rect):
                self.read_rgb(rect)

    def _corners(self) -> tuple[Box, Box]:
        """The working grid's first and last pixels."""
        return Box(0, 0, 1, 1), Box(self.grid.height - 1, self.grid.width - 1, 1, 1)

    def _tiles_in_file(self, rect: Box) -> bool:
        """Whether the tile index of a GeoTIFF places the tiles (or strips) of the bands read under
        `rect`'s top-left pixel inside the file — an InputError when one ends past its end; False
        when there is no such index to ask."""
        ds = self.dataset
        if ds.driver != "GTiff" or is_gdal_name(self.path):
            return False
        window = self.source_window(rect)
        row, col = min(int(window.row_off), ds.height - 1), min(int(window.col_off), ds.width - 1)
        try:
            file_size = os.path.getsize(self.path)
        except OSError:  # gone since it was opened (an upload deleted meanwhile): read through the open file
            return False
        for band in self.bands:
            tile_h, tile_w = ds.block_shapes[band - 1]
            key = f"{col // tile_w}_{row // tile_h}"
            offset = ds.get_tag_item(f"BLOCK_OFFSET_{key}", "TIFF", bidx=band)
            size = ds.get_tag_item(f"BLOCK_SIZE_{key}", "TIFF", bidx=band)
            if offset is None or size is None:
                return False
            if int(offset) + int(size) > file_size:
                raise InputError(f"cannot read the pixels of {Path(self.path).name} (truncated file?): it ends at "
                                 f"byte {file_size}, before the end of the tile holding pixel (row {row}, column "
                                 f"{col}) at byte {int(offset) + int(size)}")
        return True

    def user_crs(self, crs: str, what: str, hint: str = ""):
        """A CRS a user named ('EPSG:4326', WKT, a PROJ string: `engine.geo.crs_text`) for `what`, which
        must be placed on this raster."""
        from rasterio.crs import CRS

        from engine.geo.crs_text import parse_crs

        if self.crs is None and self.sensor_model is not None:
            raise InputError(f"the raster is georeferenced by {self.sensor_model.what} only (no geotransform), so "
                             f"{what} in a CRS cannot be placed on it exactly; give it in pixel space (x = column, "
                             f"y = -row){hint}")
        if self.crs is None:
            raise InputError(f"the raster has no CRS, so {what} in another CRS cannot be placed on it{hint}")
        given = parse_crs(crs, f"the CRS of {what}")
        try:
            with rasterio.Env():  # GDAL's own error (a "ERROR 1: PROJ: ..." line) goes to its log, not stderr
                return CRS.from_wkt(given.to_wkt())
        except Exception:
            raise InputError(f"the CRS of {what}: unknown CRS '{crs[:80]}'") from None

    def to_raster_crs(self, geom, crs: str, what: str, hint: str = ""):
        """A shapely geometry given in a user's CRS, in the raster's CRS."""
        import shapely
        from pyproj import Transformer

        given = self.user_crs(crs, what, hint)
        if given == self.crs:
            return geom
        return shapely.transform(geom, Transformer.from_crs(given, self.crs, always_xy=True).transform,
                                 interleaved=False)

    def restrict_to(self, mask, crs: str | None = None) -> None:
        """Only pixels inside this (Multi)Polygon (WKT or shapely) count as valid (e.g. selected fields);
        `crs` is the geometry's CRS (default: the raster's)."""
        import shapely

        geom = _mask_polygons(mask) if isinstance(mask, str) else mask
        if crs is not None:
            geom = self.to_raster_crs(geom, crs, "a mask")
        if not geom.intersects(shapely.box(*self.bounds)):
            raise InputError("the mask does not overlap the raster area")
        self.mask_geometry = geom

    def block_validity(self, core: Box, within: tuple[Box, np.ndarray] | None = None) -> "BlockValidity":
        """Where a working-grid block has no data: on the working grid (`read_valid`), or — on a
        resampled grid where something declares no data — on its rectangle of the source grid, read at
        the source's own pixels, so that no data in the outputs is exactly the source's, not the working
        pixels' put back. Read beside a GPU in the reader threads, with the block's pixels."""
        if not self.grid.resampled or not self._declares_no_data:
            return BlockValidity(self.read_valid(core, within))
        rect = self.source_rect(core)
        invalid = ~self._source_valid(rect) if rect.h and rect.w else None
        return BlockValidity(None, invalid if invalid is not None and invalid.any() else None)

    def put_back(self, core: Box, validity: "BlockValidity", *arrays, fill):
        """A block's arrays [..., h, w] on the working grid → (source-grid rectangle, the arrays there,
        `fill` where the source has no data) — numpy arrays, or torch tensors on their device."""
        if validity.working is not None:
            return self.to_source_grid(core, *filled(arrays, ~validity.working, fill))
        rect, arrays = self.to_source_grid(core, *arrays)
        return rect, filled(arrays, validity.source_invalid, fill)

    @property
    def _declares_no_data(self) -> bool:
        return (not self._masks_all_valid or self.floating or self.nodata is not None
                or self.mask_geometry is not None)

    def _source_valid(self, rect: Box) -> np.ndarray:
        """Validity [h, w] of a rectangle of the area's source grid, at the source's own pixels: read a
        band of rows at a time, so that what the reads hold beside the result stays small (a block of a
        3 cm drone image read at 0.5 m covers 34,000² source pixels)."""
        valid = np.empty((rect.h, rect.w), dtype=bool)
        rows = max(1, _VALIDITY_CHUNK_PIXELS // rect.w)
        for top in range(0, rect.h, rows):
            h = min(rows, rect.h - top)
            window = Window(self.window.col_off + rect.x, self.window.row_off + rect.y + top, rect.w, h)
            part = self._mask_valid(window, h, rect.w)
            if self.floating or self.nodata is not None:
                part &= self._value_valid(self._read_nearest(window, h, rect.w))
            valid[top:top + h] = part
        if self.mask_geometry is not None:
            valid &= self._inside_mask(self.transform @ Affine.translation(rect.x, rect.y), rect.h, rect.w)
        return valid

    def read_valid(self, rect: Box, within: tuple[Box, np.ndarray] | None = None) -> np.ndarray:
        """Validity mask [h, w] (True = data in every chosen band, inside the mask if any) of a
        working-grid rectangle. `within`: a rectangle holding `rect` and its validity as
        `read_pixels` gave it; on a working grid that is the source grid, `rect`'s is cut from it
        instead of read again (the same pixels' masks and values)."""
        if within is not None and not self.grid.resampled:
            box, box_valid = within
            valid = box_valid[rect.y - box.y:rect.y - box.y + rect.h, rect.x - box.x:rect.x - box.x + rect.w].copy()
        else:
            window = self.source_window(rect)
            valid = self._mask_valid(window, rect.h, rect.w)
            if self.floating or self.nodata is not None:  # NaN/±inf (whatever the file declares), --nodata
                valid &= self._value_valid(self._read_nearest(window, rect.h, rect.w))
        if self.mask_geometry is not None:
            valid &= self._inside_mask(self.working_transform() @ Affine.translation(rect.x, rect.y), rect.h, rect.w)
        return valid

    def window_inside_mask(self, window: Window, height: int, width: int) -> np.ndarray | None:
        """Which pixels [height, width] of a source window read at that size lie inside the mask
        (`restrict_to`); None without a mask. The model still sees the pixels outside (context), as in
        the block path; what is outside counts as no data."""
        if self.mask_geometry is None:
            return None
        to_area = Affine.translation(window.col_off - self.window.col_off, window.row_off - self.window.row_off)
        return self._inside_mask(self.transform @ to_area @ Affine.scale(window.width / width, window.height / height),
                                 height, width)

    def _inside_mask(self, transform: Affine, height: int, width: int) -> np.ndarray:
        """Which pixels [height, width] of a grid (`transform`: its pixels to the raster's CRS) have their
        centre inside `mask_geometry`."""
        from rasterio.features import geometry_mask

        return geometry_mask([self.mask_geometry], out_shape=(height, width), transform=transform, invert=True)

    @functools.cached_property
    def _masks_all_valid(self) -> bool:
        """Whether GDAL's masks of the chosen bands are all-valid (the file declares no nodata, alpha
        or mask band): then they need not be read."""
        from rasterio.enums import MaskFlags

        if self.palette is not None:  # the VRT's nodata value is never met where nothing is no data
            return not (self.palette.has_invalid or self.palette.masked)
        return (self._unmasked_alpha is None
                and all(MaskFlags.all_valid in self.dataset.mask_flag_enums[b - 1] for b in self.bands))

    @functools.cached_property
    def _unmasked_alpha(self) -> int | None:
        """A band marked alpha that GDAL's masks of the chosen bands do not use (an alpha band that is not
        the last, as ARGB files have it): its 0 is no data all the same, as QGIS draws it transparent."""
        from rasterio.enums import MaskFlags

        if self.palette is not None:
            return None
        alphas = [i + 1 for i, c in enumerate(self.dataset.colorinterp) if c == ColorInterp.alpha]
        used = any(MaskFlags.alpha in self.dataset.mask_flag_enums[b - 1] for b in self.bands)
        return alphas[0] if alphas and not used and alphas[0] not in self.bands else None

    def _mask_valid(self, window: Window, height: int, width: int) -> np.ndarray:
        """[height, width]: where every chosen band has data by GDAL's masks (a window inside the raster),
        and by an alpha band those masks leave out; one mask read where the bands share it (an alpha band,
        an internal mask)."""
        if self._masks_all_valid:
            return np.ones((height, width), dtype=bool)
        bands = self.bands[:1] if self._masks_shared else self.bands
        with self._reading():
            masks = self._handle().read_masks(bands, window=window, out_shape=(len(bands), height, width),
                                              resampling=Resampling.nearest)
            valid = (masks > 0).all(axis=0)
            if self._unmasked_alpha is not None:
                alpha = self._handle().read(self._unmasked_alpha, window=window, out_shape=(height, width),
                                            resampling=Resampling.nearest)
                valid &= alpha > 0
        return valid

    @functools.cached_property
    def _masks_shared(self) -> bool:
        """Whether GDAL's mask is one for the whole dataset (an alpha band, an internal or .msk mask)."""
        from rasterio.enums import MaskFlags

        return all(MaskFlags.per_dataset in self.dataset.mask_flag_enums[b - 1] for b in self.bands)

    def _read_nearest(self, window: Window, height: int, width: int) -> np.ndarray:
        with self._reading():
            return self._handle().read(self.bands, window=window, out_shape=(3, height, width),
                                       resampling=Resampling.nearest)

    @contextmanager
    def _reading(self):
        """Turn GDAL read failures into one readable line."""
        try:
            yield
        except rasterio.errors.RasterioError as exc:
            raise InputError(f"cannot read the pixels of {Path(self.path).name} (corrupt or truncated file?): "
                             f"{first_line(exc)}") from None

    def _handle(self):
        """The dataset to read with in this thread: the one opened at start in the thread that opened
        it, a thread's own otherwise (a GDAL dataset must not be read by two threads at once), so
        that several threads can read blocks in parallel."""
        if threading.get_ident() == self._owner:
            return self.dataset
        handle = getattr(self._local, "dataset", None)
        if handle is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
                handle = self._local.dataset = (rasterio.open(self.palette.xml) if self.palette is not None else
                                                rasterio.open(self.path, driver=self.dataset.driver))
            with self._handles_lock:
                self._handles.append(handle)
        return handle

    def close(self) -> None:
        with self._handles_lock:
            for handle in self._handles:
                handle.close()
            self._handles.clear()
        self.dataset.close()

    def __enter__(self) -> "RasterSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _mask_polygons(wkt: str):
    """A mask's WKT as a shapely (Multi)Polygon with an area; InputError naming what is wrong otherwise."""
    import shapely

    try:
        geom = shapely.from_wkt(wkt)
    except NotImplementedError:  # GEOS reads no curves
        raise InputError("the mask has curves (a CurvePolygon or MultiSurface): send it as a Polygon or "
                         "MultiPolygon, its curves made straight segments") from None
    except Exception:  # noqa: BLE001 — any other parse failure is the same answer
        raise InputError("the mask is not valid WKT") from None
    if geom is None or geom.is_empty or geom.geom_type not in ("Polygon", "MultiPolygon"):
        raise InputError("the mask must be a Polygon or MultiPolygon with an area")
    refuse_far_coordinates(geom, "the mask")
    if not geom.area > 0:
        raise InputError("the mask must be a Polygon or MultiPolygon with an area")
    return geom


def probe_area(path: str | Path, **source_args) -> None:
    """Check a raster area before a run, without inspecting its pixels: opened (with `RasterSource`'s
    arguments) and probed, so that a missing, truncated or unreadable input raises InputError."""
    with RasterSource(path, inspect_pixels=False, **source_args) as source:
        source.probe()
