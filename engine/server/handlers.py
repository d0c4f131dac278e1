"""What the API's jobs do: check a request up front (4xx on bad input), then run it in the worker
with the same pipeline code as the CLI."""

from __future__ import annotations

from pathlib import Path

from fastapi import HTTPException

from engine.errors import FarSLIPError, InputError, first_line
from engine.server.raster_policy import check_input
from engine.server.schemas import GridRequest, InputRef, LabelRequest, SearchRequest, SegmentRequest


def allowed_path(raw: str, settings, what: str = "input") -> Path:
    """Resolve `..` and symlinks first, then apply the folder policy: 403 outside allowed roots.
    `~` is not expanded: the engine's home folder means nothing to a client."""
    if "\x00" in raw:
        raise HTTPException(400, f"{what} path contains a NUL byte")
    path = Path(raw)
    if not path.is_absolute():
        raise HTTPException(400, f"{what} path must be absolute (got '{raw[:200]}')")
    try:
        real = path.resolve(strict=False)
        roots = [r.resolve() for r in settings.allow_roots]
        if roots:
            if not any(real == r or real.is_relative_to(r) for r in roots):
                raise HTTPException(403, f"{what} path is outside the folders this engine serves (--allow-root)")
        elif settings.remote:
            raise HTTPException(403, f"this engine serves no folders (remote mode without --allow-root): upload "
                                     f"the {what} instead")
        if not real.exists():
            raise HTTPException(404, f"{what} not found: {raw}")
        if not real.is_file():
            raise HTTPException(400, f"{what} is not a file: {raw}")
    except OSError as exc:  # a name or path too long, a loop of links, ...
        raise HTTPException(400, f"{what} path cannot be used: {exc.strerror or first_line(exc)}") from None
    return real


def resolve_input(ref: InputRef, store, settings) -> str:
    if ref.upload_id is not None:
        path = store.upload_path(ref.upload_id)
        if path is None:
            raise HTTPException(404, f"no upload {ref.upload_id} (expired or never finished)")
        return str(path)
    path = allowed_path(ref.path, settings)
    check_input(path, settings, allowed_path)
    return str(path)


def resolve_model(name: str | None, settings) -> str:
    from engine.models.registry import find_release

    name = name or settings.default_model
    if find_release(name) is not None:
        return name
    if "/" in name or name.endswith((".pt", ".pth", ".bin", ".safetensors")):
        return str(allowed_path(name, settings, what="model"))
    raise HTTPException(400, f"unknown model '{name}'")


def _options(body, upsampler: str | None = None):
    """Inference options of a request; `upsampler` is the checked path (see `check_upsampler`)."""
    from engine.dense import preset

    return preset(body.preset).with_overrides(prob_threshold=body.threshold, background=body.background,
                                              global_bias=body.global_bias, upsampler=upsampler)


def check_upsampler(raw: str, model: str, arch: str | None, settings) -> str:
    """The up-sampler file (folder policy applied), read and checked against the model's feature size
    when the architecture is known without loading the model: 4xx on a bad file."""
    from engine.dense.upsampler import HUB_SCHEME, build_upsampler, feature_dim_of, read_state
    from engine.models.registry import arch_config, find_release

    if raw.startswith(HUB_SCHEME):
        raise HTTPException(400, "the API takes an up-sampler file on the engine machine (an absolute path)")
    path = allowed_path(raw, settings, what="up-sampler")
    release = find_release(model)
    arch = arch or (release.arch if release else None)
    try:
        state = read_state(path)
    except FarSLIPError:
        raise HTTPException(400, f"up-sampler: {path.name} is not readable up-sampler weights (a JBU .ckpt)") from None
    except Exception as exc:  # noqa: BLE001 - unpickling any other file fails in many ways (KeyError, EOFError, ...)
        raise HTTPException(400, f"up-sampler: {path.name} is not readable up-sampler weights (a JBU .ckpt): "
                                 f"{type(exc).__name__}") from None
    try:
        dim = int(arch_config(arch)["embed_dim"]) if arch else feature_dim_of(state, path.name)
        build_upsampler(state, dim, source=path.name)
    except FarSLIPError as exc:
        raise HTTPException(400, f"up-sampler: {exc}") from None
    return str(path)


MAX_COORDINATE = 1e15  # far beyond any CRS's extent; larger values overflow when mapped to pixels


def check_coordinates(values, what: str) -> None:
    """A 400 for coordinates no raster can hold (pydantic already refused NaN and infinities)."""
    if any(abs(v) > MAX_COORDINATE for v in values):
        shown = ", ".join(f"{v:g}" for v in values[:8])
        raise HTTPException(400, f"{what} [{shown}] has coordinates beyond ±{MAX_COORDINATE:g}: no raster lies there")


def _area(body) -> dict:
    if body.bbox:
        check_coordinates(body.bbox, "bbox")
    return {"bands": tuple(body.bands) if body.bands else None, "window": tuple(body.window) if body.window else None,
            "bbox": tuple(body.bbox) if body.bbox else None, "bbox_crs": body.bbox_crs}


def _check_source(path: str, body, gsd=None, mask_wkt=None, mask_crs=None):
    from engine.geo.source import RasterSource

    area = _area(body)
    with RasterSource(path, area["bands"], gsd, area["window"], area["bbox"], area["bbox_crs"]) as source:
        source.probe()
        if mask_wkt:
            source.restrict_to(mask_wkt, mask_crs)


def _prepared(body, store, settings, check) -> dict:
    """Run `check` (raising FarSLIPError on bad input → 400), resolve input and model paths."""
    try:
        path = resolve_input(body.input, store, settings)
        check(path)
    except FarSLIPError as exc:
        raise HTTPException(400, str(exc)) from None
    model = resolve_model(body.model, settings)
    request = body.model_dump()
    request.update(resolved_input=path, resolved_model=model,
                   arch=body.arch or (settings.default_arch if model == settings.default_model else None))
    return request


def prepare_segment(body: SegmentRequest, store, settings) -> dict:
    """Check everything that can be checked without the model; return the request the worker runs."""
    from engine.dense import PromptSet

    def check(path):
        PromptSet.parse(body.classes)
        _options(body)
        _check_source(path, body, body.gsd, body.mask_wkt, body.mask_crs)

    upsampler = body.upsampler
    body = body.model_copy(update={"upsampler": None})  # checked below, under the folder policy
    request = _prepared(body, store, settings, check)
    if upsampler:
        request.update(upsampler=upsampler, resolved_upsampler=check_upsampler(
            upsampler, request["resolved_model"], request["arch"], settings))
    return request


def prepare_grid(body: GridRequest, store, settings) -> dict:
    from engine.dense import PromptSet

    def check(path):
        PromptSet.parse(body.classes)
        if body.cell_m is None and body.cell_px is None:
            raise InputError("give cell_m (metres) or cell_px (pixels)")
        _check_source(path, body)

    return _prepared(body, store, settings, check)


def prepare_search(body: SearchRequest, store, settings) -> dict:
    from engine.geo.search import query_prompts

    def check(path):
        query_prompts(body.query)
        _check_source(path, body, body.gsd)

    return _prepared(body, store, settings, check)


def _body(model_cls, request: dict):
    return model_cls(**{k: v for k, v in request.items() if not k.startswith("resolved_")})


def grid_handler(pool):
    def run(request: dict, ctx) -> dict:
        from engine.dense.scenes import SceneClassifier
        from engine.geo.scenes import GridJob, classify_grid

        body = _body(GridRequest, request)
        classifier = SceneClassifier(pool.get(request["resolved_model"], request.get("arch")), body.classes)
        job = GridJob(input=request["resolved_input"], out_dir=str(ctx.out_dir), cell_m=body.cell_m,
                      cell_px=body.cell_px, name="result", **_area(body))
        return classify_grid(job, classifier, progress=ctx.progress, cancel=ctx.cancel)

    return run


def search_handler(pool):
    def run(request: dict, ctx) -> dict:
        from engine.geo.search import SearchJob, search_raster

        body = _body(SearchRequest, request)
        job = SearchJob(input=request["resolved_input"], out_dir=str(ctx.out_dir), query=body.query,
                        top_k=body.top_k, gsd=body.gsd, heatmap=body.heatmap, name="result", **_area(body))
        return search_raster(job, pool.get(request["resolved_model"], request.get("arch")), progress=ctx.progress,
                             cancel=ctx.cancel)

    return run


def label(body: LabelRequest, pool, store, settings) -> dict:
    """Region labelling, synchronously (small requests: at most 512 regions)."""
    import time

    from engine.dense.scenes import SceneClassifier
    from engine.geo.regions import Region
    from engine.geo.scenes import label_regions
    from engine.geo.source import RasterSource

    started = time.perf_counter()
    for i, r in enumerate(body.regions):
        check_coordinates(r.bbox or [v for p in r.polygon or () for v in p], f"regions.{i}")
    path = resolve_input(body.input, store, settings)
    model_name = resolve_model(body.model, settings)
    arch = body.arch or (settings.default_arch if model_name == settings.default_model else None)
    try:
        regions = [Region(bbox=tuple(r.bbox) if r.bbox else None,
                          polygon=tuple(tuple(p[:2]) for p in r.polygon) if r.polygon else None) for r in body.regions]
        if any(r.polygon and any(len(p) < 2 for p in r.polygon) for r in body.regions):
            raise InputError("polygon points need two coordinates")
        classifier = SceneClassifier(pool.get(model_name, arch), body.classes, template_set=body.template_set)
        with RasterSource(path, tuple(body.bands) if body.bands else None) as source:
            labels = label_regions(source, regions, classifier, crs=body.crs)
    except FarSLIPError as exc:
        raise HTTPException(400, str(exc)) from None
    return {"classes": classifier.classes, "regions": labels, "model": model_name,
            "seconds": round(time.perf_counter() - started, 4)}


def segment_handler(pool, store, settings):
    def run(request: dict, ctx) -> dict:
        from engine.dense import Segmenter
        from engine.geo.pipeline import RasterJob, segment_raster

        body = SegmentRequest(**{k: v for k, v in request.items() if not k.startswith("resolved_")})
        model = pool.get(request["resolved_model"], request.get("arch"))
        segmenter = Segmenter(model, body.classes, _options(body, request.get("resolved_upsampler")))
        job = RasterJob(input=request["resolved_input"], out_dir=str(ctx.out_dir),
                        bands=tuple(body.bands) if body.bands else None, gsd=body.gsd,
                        window=tuple(body.window) if body.window else None,
                        bbox=tuple(body.bbox) if body.bbox else None, bbox_crs=body.bbox_crs, block=body.block,
                        scores=body.scores, polygons=body.polygons, min_area=body.min_area,
                        simplify=body.simplify, name="result", mask_wkt=body.mask_wkt, mask_crs=body.mask_crs)
        if ctx.cancel.is_set():
            raise InputError("cancelled")
        return segment_raster(job, segmenter, progress=ctx.progress, cancel=ctx.cancel)

    return run
