"""Request and response bodies of the HTTP API (pydantic); the OpenAPI spec is generated from them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

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
    """Every request body: no unknown fields, no NaN or infinite numbers, no lone surrogates in text."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def valid_unicode(cls, data):
        where = lone_surrogate_at(data)
        if where is not None:
            raise ValueError(f"{where} holds a lone surrogate (\\ud800-\\udfff escape): not valid Unicode text")
        return data


class InputRef(Strict):
    """Where the imagery is: a raster file on the engine's machine, or an uploaded one."""

    path: str | None = Field(None, max_length=4096, description="absolute path on the engine machine")
    upload_id: str | None = Field(None, max_length=64, pattern=r"^[0-9a-f]{32}$")

    @model_validator(mode="after")
    def exactly_one(self):
        if (self.path is None) == (self.upload_id is None):
            raise ValueError("give exactly one of path or upload_id")
        return self


class ModelChoice(Strict):
    model: str | None = Field(None, max_length=4096, description="release name or checkpoint path (default: the server's)")
    arch: str | None = Field(None, max_length=64)


class InferenceChoice(Strict):
    preset: Literal["paper", "enhanced"] = "paper"
    threshold: float | None = Field(None, ge=0.0, lt=1.0)
    background: str | None = Field(None, min_length=1, max_length=200)
    global_bias: float | None = Field(None, ge=0.0, le=1.0)
    upsampler: str | None = Field(None, min_length=1, max_length=4096,
                                  description="absolute path on the engine machine of learned feature "
                                              "up-sampler weights (SegEarth-OV's SimFeatUp JBU .ckpt)")


Classes = list[str] | str


class SegmentRequest(ModelChoice, InferenceChoice):
    input: InputRef
    classes: Classes = Field(..., description="class lines ('building,roof') or one 'a,b; c' string")
    window: list[int] | None = Field(None, min_length=4, max_length=4, description="col,row,width,height")
    bbox: list[float] | None = Field(None, min_length=4, max_length=4, description="minx,miny,maxx,maxy")
    bbox_crs: str | None = Field(None, max_length=200)
    gsd: float | None = Field(None, gt=0, le=10000)
    bands: list[int] | None = Field(None, min_length=3, max_length=3)
    scores: bool = False
    polygons: bool = True
    min_area: float = Field(0.0, ge=0)
    simplify: float = Field(1.0, ge=0, le=100)
    block: int = Field(1024, ge=256, le=8192)
    mask_wkt: str | None = Field(None, max_length=500_000, description="segment only inside this (Multi)Polygon")
    mask_crs: str | None = Field(None, max_length=200, description="CRS of mask_wkt (default: the raster's)")


class AreaChoice(Strict):
    window: list[int] | None = Field(None, min_length=4, max_length=4, description="col,row,width,height")
    bbox: list[float] | None = Field(None, min_length=4, max_length=4, description="minx,miny,maxx,maxy")
    bbox_crs: str | None = Field(None, max_length=200)
    bands: list[int] | None = Field(None, min_length=3, max_length=3)


class GridRequest(ModelChoice, AreaChoice):
    input: InputRef
    classes: Classes
    cell_m: float | None = Field(None, gt=0, le=100000, description="cell size in metres")
    cell_px: float | None = Field(None, ge=8, le=100000, description="cell size in pixels (rasters without CRS)")


class SearchRequest(ModelChoice, AreaChoice):
    input: InputRef
    query: str = Field(..., min_length=1, max_length=300)
    top_k: int = Field(10, ge=1, le=1000)
    gsd: float | None = Field(None, gt=0, le=10000)
    heatmap: bool = True


class RegionIn(Strict):
    bbox: list[float] | None = Field(None, min_length=4, max_length=4)
    polygon: list[list[float]] | None = Field(None, min_length=3, max_length=10000)


class LabelRequest(ModelChoice):
    input: InputRef
    classes: Classes
    regions: list[RegionIn] = Field(..., min_length=1, max_length=512)
    crs: str | None = Field(None, max_length=200, description="CRS of the regions; 'pixel'; default: the raster's")
    bands: list[int] | None = Field(None, min_length=3, max_length=3)
    template_set: Literal["rs", "imagenet80", "name", "region"] = "rs"


class RegionLabel(BaseModel):
    index: int
    best: str
    score: float
    probabilities: dict[str, float]


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


class Health(BaseModel):
    version: str
    device: str
    models_loaded: list[dict]
    queue_length: int
    running: str | None


class Error(BaseModel):
    detail: str
