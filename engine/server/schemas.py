"""Request and response bodies of the HTTP API (pydantic); the OpenAPI spec is generated from them."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from engine.server.ids import PATTERN as ID_PATTERN
from engine.job import Area, Classes, Coordinate, CrsText, ModelChoice, SegmentSettings, Strict


def _one_of_path_or_upload(schema: dict) -> None:
    """The schema of InputRef says what its validator enforces: exactly one of the two, never null."""
    for name, spec in schema["properties"].items():
        spec.update(next(option for option in spec.pop("anyOf") if option.get("type") != "null"))
        spec.pop("default", None)
    schema["oneOf"] = [{"required": ["path"]}, {"required": ["upload_id"]}]


class InputRef(Strict):
    """Where the imagery is: a raster file on the engine's machine, or an uploaded one."""

    model_config = ConfigDict(json_schema_extra=_one_of_path_or_upload)

    path: str | None = Field(None, max_length=4096, description="absolute path on the engine machine")
    upload_id: str | None = Field(None, max_length=64, pattern=ID_PATTERN)

    @model_validator(mode="after")
    def exactly_one(self):
        if (self.path is None) == (self.upload_id is None):
            raise ValueError("give exactly one of path or upload_id")
        return self


class SegmentRequest(SegmentSettings):
    """A segmentation job: where the imagery is, plus the run's settings (`engine.job.SegmentSettings`)."""

    input: InputRef


class WithClasses(Strict):
    classes: Classes


class GridRequest(ModelChoice, Area, WithClasses):
    input: InputRef
    cell_m: float | None = Field(None, gt=0, le=100000, description="cell size in metres")
    cell_px: float | None = Field(None, ge=8, le=100000, description="cell size in pixels (rasters without CRS)")


class SearchRequest(ModelChoice, Area):
    input: InputRef
    query: str = Field(..., min_length=1, max_length=300)
    top_k: int = Field(10, ge=1, le=1000)
    gsd: float | None = Field(None, gt=0, le=10000)
    heatmap: bool = True


Point = Annotated[list[Coordinate], Field(min_length=2, max_length=3)]


class RegionIn(Strict):
    bbox: tuple[Coordinate, Coordinate, Coordinate, Coordinate] | None = Field(None, description="minx,miny,maxx,maxy")
    polygon: list[Point] | None = Field(None, min_length=3, max_length=10000, description="x,y points of the ring")


class LabelRequest(ModelChoice, WithClasses):
    input: InputRef
    regions: list[RegionIn] = Field(..., min_length=1, max_length=512)
    crs: CrsText | None = Field(None, description="CRS of the regions; 'pixel'; default: the raster's")
    bands: list[int] | None = Field(None, min_length=3, max_length=3)
    nodata: float | None = Field(None, ge=-1e300, le=1e300, description="as a segmentation job's")
    template_set: Literal["rs", "imagenet80", "name", "region"] = "rs"


JobId = Annotated[str, Field(pattern=ID_PATTERN, description="a job of this engine")]


class LabelledPolygon(Strict):
    wkt: str = Field(..., min_length=1, max_length=200_000, description="a (Multi)Polygon as WKT")
    label: str = Field(..., min_length=1, max_length=200, description="its class (a name or synonym)")


class TeachRequest(ModelChoice):
    """Teach classes from labelled polygons on a raster (`farslip classes learn`): the job's file
    `result.classes.json` is what `classes: "@job:<id>"` of a segmentation job uses."""

    input: InputRef
    classes: Classes
    labels: list[LabelledPolygon] = Field(..., min_length=1, max_length=2000)
    labels_crs: CrsText | None = Field(None, description="CRS of the labels (default: the raster's)")
    gsd: float | None = Field(None, gt=0, le=10000)
    bands: tuple[Annotated[int, Field(ge=1, le=65535)], Annotated[int, Field(ge=1, le=65535)],
                 Annotated[int, Field(ge=1, le=65535)]] | None = None
    nodata: float | None = Field(None, ge=-1e300, le=1e300)
    preset: Literal["paper", "enhanced"] = "paper"
    global_bias: float | None = Field(None, ge=0.0, le=1.0)

    def open_source(self, path: str, inspect_pixels: bool = True):
        """The raster as teaching reads it (bands, working GSD, nodata); the caller closes it.
        `inspect_pixels` False: for checks only (see RasterSource)."""
        from engine.geo.source import RasterSource

        return RasterSource(path, gsd=self.gsd, bands=self.bands, nodata=self.nodata, inspect_pixels=inspect_pixels)


class AccuracyRequest(Strict):
    """A finished segmentation job's class raster against reference polygons (`farslip accuracy`)."""

    job: JobId
    reference: list[LabelledPolygon] = Field(..., min_length=1, max_length=10000)
    reference_crs: CrsText | None = Field(None, description="CRS of the reference (default: the raster's)")


class RegionLabel(BaseModel):
    """One region's classes; a region with under half its pixels holding data gets none (best, score and
    probabilities null), as a grid cell does."""

    index: int
    best: str | None = Field(..., description="the most likely class; null when the region is mostly no data")
    score: float | None = Field(..., description="its probability; null when the region is mostly no data")
    probabilities: dict[str, float] | None = Field(
        ..., description="every class's probability, best first; null when the region is mostly no data")
    valid_fraction: float = Field(..., ge=0.0, le=1.0, description=(
        "share of the region's pixels (inside the polygon, for a polygon) that hold data; pixels outside the "
        "raster count as no data. Under 0.5: no class"))


class LabelResponse(BaseModel):
    classes: list[str]
    regions: list[RegionLabel]
    model: str
    seconds: float


class PromptsRequest(Strict):
    classes: Classes


class JobCreated(BaseModel):
    id: str
    state: str


class JobStatus(BaseModel):
    id: str
    kind: str
    state: Literal["queued", "running", "done", "failed", "cancelled"]
    progress: float
    message: str
    created: float
    updated: float
    expires: float
    revision: int = Field(0, description="0 when created, +1 with every change (state, progress, message); "
                                         "pass it back as `since` to wait for the next change")
    files: list[str] = []
    summary: dict | None = None


class UploadCreated(BaseModel):
    upload_id: str
    size: int
    width: int
    height: int
    count: int
    crs: str | None


class ClassesUploaded(BaseModel):
    upload_id: str = Field(..., description='jobs name these classes "classes": "@upload:<upload_id>"')
    size: int
    classes: list[str]
    model: dict


class Health(BaseModel):
    version: str
    device: str
    models_loaded: list[dict]
    queue_length: int
    running: str | None
    path_formats: list[str] = Field(description="The GDAL drivers (short names) of the rasters this engine reads "
                                                "by path for a client; any other raster is to be uploaded as a "
                                                "GeoTIFF")


class Error(BaseModel):
    detail: str


if __name__ == "__main__":  # python -m engine.server.schemas: the JSON Schema of a segmentation job body
    import json

    print(json.dumps(SegmentRequest.model_json_schema(), indent=1, sort_keys=True))
