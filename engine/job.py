"""The settings of a segmentation run, validated in one place for every way a run is asked for.

`SegmentSettings` holds what a user chooses — classes, area, working resolution, inference options,
outputs, model — and refuses what no run could use: unknown fields, NaN or infinite numbers, lone
surrogates in text, out-of-range values, a class list the one prompt parser cannot read, a window or
bbox no raster can hold. The same model is

- the body of `POST /v1/jobs/segment` (`engine.server.schemas.SegmentRequest` adds where the imagery
  is) and stored as JSON with the job, read back by the worker;
- built from the arguments of `farslip segment` and `farslip segment-batch` (`from_fields`: the first
  problem becomes one line naming the option);
- what the QGIS plugin's payload builder is tested against (the request's JSON Schema, exported by
  `python -m engine.server.schemas`).

The JSON Schema says all it can (so a client can check a body before sending it); `check()` says the
rest — the class list as the prompt parser reads it, max > min in a bbox — as an InputError (a 400
from the API: the body fitted the schema). What depends on the raster (bands that exist, a bbox that
overlaps it, the size of the working grid) is checked when it is opened: `open_source` is the one
place a run's area is applied, and `check_pixel_budget` the one place a run's size is held against a
limit.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from engine.errors import InputError
from engine.geo.vectors import MAX_COORDINATE

if TYPE_CHECKING:
    from engine.dense import InferenceOptions, PromptSet
    from engine.dense.taught import TaughtClasses
    from engine.geo.pipeline import RasterJob
    from engine.geo.source import RasterSource

MAX_CLASS_LINES = 1000  # the parser refuses more than 254 with a clear message; beyond this, 422


def lone_surrogate_at(value, where: str = "") -> str | None:
    """Where in a decoded JSON value a string (or key) holds a lone UTF-16 surrogate (JSON allows the
    escape `"\\ud800"`, but it is no Unicode text: paths, prompts and answers could not encode it)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return where or "body"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            name = f"{where}.{key}" if where else str(key)
            if isinstance(key, str) and lone_surrogate_at(key) is not None:
                return (where or "body") + " (a key)"
            found = lone_surrogate_at(item, name)
            if found is not None:
                return found
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found = lone_surrogate_at(item, f"{where}.{i}" if where else str(i))
            if found is not None:
                return found
    return None


class Strict(BaseModel):
    """Every settings object and request body: no unknown fields, no NaN or infinite numbers, no lone
    surrogates in text."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def valid_unicode(cls, data):
        where = lone_surrogate_at(data)
        if where is not None:
            raise ValueError(f"{where} holds a lone surrogate (\\ud800-\\udfff escape): not valid Unicode text")
        return data


NO_CLASSES = "no classes given: name at least one class, e.g. 'building; road; tree'"
# The schema says what it can (non-empty text with a name in it, at most 1,000 lines); the parser says
# the rest (duplicate names, more than 254 classes) when a run is checked: a 400, not a 422.
ClassText = Annotated[str, Field(min_length=1, max_length=200_000, pattern=r"[^\s;,]")]
ClassLine = Annotated[str, Field(min_length=1, max_length=10_000, pattern=r"[^\s,]")]
Classes = ClassText | Annotated[list[ClassLine], Field(min_length=1, max_length=MAX_CLASS_LINES)]
Coordinate = Annotated[float, Field(ge=-MAX_COORDINATE, le=MAX_COORDINATE)]
Offset = Annotated[int, Field(ge=0, le=2**31 - 1)]
Length = Annotated[int, Field(ge=1, le=2**31 - 1)]
Band = Annotated[int, Field(ge=1, le=65535)]
# an authority code (EPSG:32633), a PROJ string or a WKT: a custom CRS's WKT runs to a few thousand characters
CrsText = Annotated[str, Field(min_length=1, max_length=20_000)]


class ModelChoice(Strict):
    model: str | None = Field(None, min_length=1, max_length=4096,
                              description="release name or checkpoint path (default: the engine's)")
    arch: str | None = Field(None, min_length=1, max_length=64)


class Area(Strict):
    """Which pixels of the raster, and which bands as red, green, blue."""

    window: tuple[Offset, Offset, Length, Length] | None = Field(None, description="col,row,width,height (pixels)")
    bbox: tuple[Coordinate, Coordinate, Coordinate, Coordinate] | None = Field(
        None, description="minx,miny,maxx,maxy (max > min)")
    bbox_crs: CrsText | None = Field(None, description="CRS of bbox (default: the raster's)")
    bands: tuple[Band, Band, Band] | None = Field(None, description="1-based band numbers for R,G,B")
    nodata: float | None = Field(None, ge=-1e300, le=1e300,
                                 description="a value that is no data where every chosen band holds it (besides "
                                             "the file's own nodata, masks, and NaN)")
    mask_wkt: str | None = Field(None, min_length=1, max_length=500_000,
                                 description="only inside this (Multi)Polygon: pixels outside are no data")
    mask_crs: CrsText | None = Field(None, description="CRS of mask_wkt (default: the raster's)")

    def area_arguments(self) -> dict:
        """The area as `RasterSource`'s keyword arguments (a mask without a window or bbox: only the mask's
        bounding box is read)."""
        return {"bands": tuple(self.bands) if self.bands else None,
                "window": tuple(self.window) if self.window else None,
                "bbox": tuple(self.bbox) if self.bbox else None, "bbox_crs": self.bbox_crs,
                "nodata": self.nodata, "mask_wkt": self.mask_wkt, "mask_crs": self.mask_crs}

    def check_area(self) -> None:
        """What the schema cannot say about an area (InputError: a 400 from the API)."""
        if self.window is not None and self.bbox is not None:
            raise InputError("give either a window or a bbox, not both")
        if self.bbox is not None and not (self.bbox[2] > self.bbox[0] and self.bbox[3] > self.bbox[1]):
            raise InputError("bbox must be minx,miny,maxx,maxy with max > min")
        from engine.geo.crs_text import parse_crs

        if self.bbox_crs is not None:
            parse_crs(self.bbox_crs, "--bbox-crs")
        if self.mask_crs is not None and self.mask_wkt is None:
            raise InputError("mask_crs given without mask_wkt")
        if self.mask_crs is not None:
            parse_crs(self.mask_crs, "mask_crs")


class SegmentSettings(ModelChoice, Area):
    """Everything about a segmentation run except where the imagery is and where outputs go."""

    classes: Classes = Field(..., description="class lines ('building,roof') or one 'a,b; c' string "
                                              "(';' or new lines between classes, ',' between synonyms), or "
                                              "classes taught from labels: '@/abs/path/SITE.classes.json', "
                                              "'@job:<teach job id>' or '@upload:<id>' (sent with POST /v1/classes)")
    gsd: float | None = Field(None, gt=0, le=10000, description="working resolution, metres per pixel "
                                                                "(default: max(native, 0.5))")
    # inference
    preset: Literal["paper", "enhanced"] = "paper"
    threshold: float | None = Field(None, ge=0.0, lt=1.0, description="below this best-class probability: background")
    background: str | None = Field(None, min_length=1, max_length=200, description="background class name")
    global_bias: float | None = Field(None, ge=0.0, le=1.0, description="λ of the global-bias subtraction")
    upsampler: str | None = Field(None, min_length=1, max_length=4096,
                                  description="learned feature up-sampler weights (SegEarth-OV's SimFeatUp JBU "
                                              ".ckpt): an absolute path on the engine machine")
    # outputs
    scores: bool = Field(False, description="also write per-class probabilities (uint8)")
    polygons: bool = Field(True, description="also write polygons (GeoPackage)")
    min_area: float = Field(0.0, ge=0, le=1e12, description="drop polygons smaller than this many m²")
    simplify: float = Field(1.0, ge=0, le=100, description="polygon simplification tolerance in working pixels "
                            "(at a coarser gsd, several source pixels)")
    block: int | None = Field(None, ge=256, le=8192, description="working-grid block size in pixels (memory "
                                                                 "bound; default 1024 on a CPU, 2048 on a GPU; "
                                                                 "smaller where many class names need it)")

    _prompts: "PromptSet | TaughtClasses | None" = PrivateAttr(None)

    def check(self) -> "SegmentSettings":
        """What the schema cannot say: the class list as the prompt parser reads it, the area, the
        inference options. Raises InputError (a 400 from the API, one line from the CLI)."""
        try:
            self._prompts = read_run_classes(self.classes)
        except InputError as exc:
            raise InputError(f"classes: {exc}") from None
        self.check_area()
        self.inference_options()
        from engine.dense.prompts import PromptSet

        if self.background and isinstance(self._prompts, PromptSet):  # the class it adds counts too
            self._prompts.with_background(self.background)
        return self

    @classmethod
    def from_fields(cls, **fields) -> "SegmentSettings":
        """Build from a command line's values (None: not given) and check; the first problem is one
        InputError line naming the option as the command line spells it (`--gsd: ...`)."""
        try:
            settings = cls(**{k: v for k, v in fields.items() if v is not None})
        except ValidationError as exc:
            raise InputError(describe(exc, option_style=True)) from None
        try:
            return settings.check()
        except InputError as exc:
            text = str(exc)
            raise InputError(f"--{text}" if text.startswith("classes: ") else text) from None

    # --- what a run is made of -----------------------------------------------------------------
    @property
    def prompts(self) -> "PromptSet | TaughtClasses":
        """The classes as the segmenter takes them: a prompt set, or classes taught from labels."""
        if self._prompts is None:
            self._prompts = read_run_classes(self.classes)
        return self._prompts

    def inference_options(self, upsampler: str | None = None, **local) -> "InferenceOptions":
        """The inference options of this run; `upsampler` overrides the field (a checked path), `local`
        adds what only the machine that runs it decides (batch_size, compile)."""
        from engine.dense import preset

        return preset(self.preset).with_overrides(prob_threshold=self.threshold, background=self.background,
                                                  global_bias=self.global_bias,
                                                  upsampler=upsampler or self.upsampler, **local)

    def area_arguments(self) -> dict:
        """As `Area`'s, with the working GSD."""
        return {**super().area_arguments(), "gsd": self.gsd}

    def open_source(self, path: str, inspect_pixels: bool = True) -> "RasterSource":
        """The raster area this run reads (bands, working GSD, window or bbox, mask applied); the
        caller closes it. `inspect_pixels` False: for checks only (see RasterSource)."""
        from engine.geo.source import RasterSource

        return RasterSource(path, **self.area_arguments(), inspect_pixels=inspect_pixels)

    def raster_job(self, input: str, out_dir: str, name: str | None = None, overwrite: bool = False) -> "RasterJob":
        """The pipeline's run of this on `input` into `out_dir`; `overwrite` replaces an earlier run's
        outputs of the same name there (else the run refuses to start)."""
        from engine.geo.pipeline import RasterJob

        return RasterJob(input=input, out_dir=out_dir, name=name, overwrite=overwrite, block=self.block,
                         scores=self.scores, polygons=self.polygons, min_area=self.min_area,
                         simplify=self.simplify, **self.area_arguments())


def read_run_classes(classes) -> "PromptSet | TaughtClasses":
    """A class list, or `@SITE.classes.json` (classes taught from labels: `farslip classes learn`). No
    other file is read here: a command line turns `@file.txt` into its text before this, and the API
    applies its folder policy to a taught-classes path before this."""
    from engine.dense import PromptSet
    from engine.taught_format import is_taught_file

    if isinstance(classes, str) and is_taught_file(classes):
        from engine.dense.taught import TaughtClasses

        return TaughtClasses.load(classes[1:])
    return PromptSet.parse(classes)


def check_pixel_budget(source: "RasterSource", max_pixels: float | None) -> None:
    """Refuse a run whose working grid holds more than `max_pixels` pixels (None: no limit), naming
    the grid, the limit and what brings it under."""
    if max_pixels is None:
        return
    grid = source.grid
    pixels = grid.width * grid.height
    if pixels > max_pixels:
        gsd = f" at {source.working_gsd:.4g} m/px" if source.working_gsd else ""
        raise InputError(f"the area is {grid.width} x {grid.height} = {pixels / 1e6:,.0f} Mpx to process{gsd}, over "
                         f"this engine's limit of {max_pixels / 1e6:,.0f} Mpx: choose a coarser gsd or a smaller "
                         f"bbox/window")


_TYPE_ERRORS = ("string_type", "list_type")
# pydantic's names of a union's branches in an error's place
_BRANCH = re.compile(r"^(constrained-\w+|list\[.*\]|function-\w+\[.*\]|json-or-python\[.*\])$")


def _location(error: dict) -> list[str]:
    """An error's place without "body" and without pydantic's names of a union's branches
    ("constrained-str", "list[constrained-str]"), which say nothing to a client."""
    return [str(p) for p in error.get("loc", ()) if p != "body" and not _BRANCH.match(str(p))]


_BOUNDS = {"less_than_equal": ("le", "less than or equal to"), "greater_than_equal": ("ge", "greater than or equal to"),
           "less_than": ("lt", "less than"), "greater_than": ("gt", "greater than")}


def describe(exc, option_style: bool = False) -> str:
    """The first problem of a pydantic (or FastAPI request) validation error in one line: where, then
    what (`gsd: Input should be greater than 0`). Of a union (classes: text or class lines), the problem
    of the branch the value's type chose; a value of neither type says what is taken."""
    errors = exc.errors()
    first = errors[0] if errors else {}
    field = _location(first)[:1]
    union = [e for e in errors if _location(e)[:1] == field] if field else []
    if len(union) > 1:
        chosen = next((e for e in union if e.get("type") not in _TYPE_ERRORS), None)
        if chosen is None and field == ["classes"]:
            return f"{'--' if option_style else ''}classes: give text ('building,roof; road') or a list of class lines"
        first = chosen or first
    parts = _location(first)
    where = ".".join(parts)
    if option_style and parts:
        where = "--" + parts[0].replace("_", "-")
    message = first.get("msg", "invalid value").removeprefix("Value error, ")
    if first.get("type") in _BOUNDS:  # (pydantic writes a bound of 1e300 in its 301 digits)
        key, words = _BOUNDS[first["type"]]
        bound = (first.get("ctx") or {}).get(key)
        if isinstance(bound, (int, float)):
            message = f"Input should be {words} {bound:g}"
    if parts[:1] == ["classes"] and first.get("type") in ("string_pattern_mismatch", "string_too_short", "too_short"):
        where = "--classes" if option_style else "classes"
        one_line = len(parts) == 2 and parts[1].isdigit()  # a line of a list
        message = f"class line {int(parts[1]) + 1} holds no name" if one_line else NO_CLASSES
    return f"{where}: {message}" if where else message
