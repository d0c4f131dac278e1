"""What the API's jobs do: check a request up front (4xx on bad input), then run it in the worker
with the same pipeline code as the CLI.

Every CRS a request names (bbox_crs, mask_crs, labels_crs, reference_crs, a region's crs) is read by
`engine.geo.crs_text.parse_crs` at submit: a URL or a file name is a 400 naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import HTTPException

from engine.errors import FarSLIPError, InputError, first_line
from engine.job import check_pixel_budget, read_run_classes
from engine.server.ids import shown
from engine.server.raster_policy import SELF_CONTAINED, check_input, drivers_for
from engine.geo.crs_text import parse_crs
from engine.geo.raster_names import is_gdal_name, unreadable_file
from engine.geo.opening import only_drivers
from engine.geo.source import RasterSource, probe_area
from engine.geo.vectors import refuse_far_coordinates
from engine.server.schemas import (AccuracyRequest, GridRequest, InputRef, LabelRequest, SearchRequest, SegmentRequest,
                                   TeachRequest)
from engine.taught_format import SUFFIX as TAUGHT_SUFFIX

if TYPE_CHECKING:
    from engine.dense import PromptSet
    from engine.dense.taught import TaughtClasses


def allowed_path(raw: str, settings, what: str = "input") -> Path:
    """Resolve `..` and symlinks first, then apply the folder policy: 403 outside allowed roots.
    `~` is not expanded: the engine's home folder means nothing to a client."""
    if "\x00" in raw:
        raise HTTPException(400, f"{what} path contains a NUL byte")
    if is_gdal_name(raw):
        raise HTTPException(400, f"{what} '{raw[:200]}' is a GDAL name (a /vsi… path or a subdataset such as "
                                 f"GPKG:file:table), not a file: this engine reads a client's files by path only; "
                                 f"save the raster as a file, or upload it")
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
        if unreadable_file(real) is not None:
            raise HTTPException(403, f"the engine may not read the {what}: {raw}")
    except OSError as exc:  # a name or path too long, a loop of links, ...
        raise HTTPException(400, f"{what} path cannot be used: {exc.strerror or first_line(exc)}") from None
    return real


def served(handler, store, settings):
    """A job handler that opens rasters as the submit check allowed: when the job starts, its input
    (unless an upload, which lives in the engine's own folder) is checked again by the same policy,
    and the job opens rasters only with the drivers that check allows (see `raster_policy`)."""
    def run(request: dict, ctx) -> dict:
        gone_inputs(request, store)
        drivers = SELF_CONTAINED
        path = request.get("input")
        if path is not None and not Path(path).resolve().is_relative_to(store.uploads_dir.resolve()):
            try:
                real = allowed_path(path, settings)
                check_input(real, settings, allowed_path)
            except HTTPException as exc:
                raise InputError(f"the input changed after the job was submitted: {exc.detail}") from None
            drivers = drivers_for(real)
        with only_drivers(drivers):
            return handler(request, ctx)

    return run


def gone_inputs(request: dict, store) -> None:
    """An InputError naming the job or upload a job uses when it is gone by the time the job starts
    (the store refuses to forget one in use; this covers files removed behind the engine's back)."""
    needs = store.uses(request)
    for used in sorted(needs.jobs):
        if store.get(used) is None or not store.job_dir(used).exists():
            raise InputError(f"job {used}, which this job uses, was deleted before it could start")
    for used in sorted(needs.uploads):
        if store.upload_path(used) is None:
            raise InputError(f"upload {used}, which this job reads, was deleted before it could start")


def resolve_input(ref: InputRef, store, settings) -> str:
    if ref.upload_id is not None:
        path = store.upload_path(ref.upload_id)
        if path is None:
            raise HTTPException(404, f"no upload {ref.upload_id} (expired or never finished)")
        if path.name.endswith(TAUGHT_SUFFIX):
            raise HTTPException(400, f"upload {ref.upload_id} holds taught classes, not a raster: "
                                     f'name it in "classes": "@upload:{ref.upload_id}"')
        return str(path)
    path = allowed_path(ref.path, settings)
    check_input(path, settings, allowed_path)
    return str(path)


def resolve_model(name: str | None, arch: str | None, settings, pool=None) -> tuple[str, str | None]:
    """(model, arch) a job runs with: the server's own default model is always allowed (the operator
    chose it); a release name; or a checkpoint file under the folder policy that fits an architecture
    (checked now from its tensor names and shapes, so a wrong file is a 400, not a failed job)."""
    from engine.models.loader import check_checkpoint
    from engine.models.registry import find_release

    if name is None or name == settings.default_model:
        return settings.default_model, arch or settings.default_arch
    if find_release(name) is not None:
        return name, arch
    if "/" not in name and not name.endswith((".pt", ".pth", ".bin", ".safetensors")):
        raise HTTPException(400, f"unknown model '{name[:200]}': not a release name or a checkpoint path")
    path = str(allowed_path(name, settings, what="model"))
    if pool is None or not pool.has(path, arch):
        try:
            check_checkpoint(path, arch)
        except FarSLIPError as exc:
            raise HTTPException(400, f"model: {exc}") from None
    return path, arch


def check_names_fit(names: list[str], template_set: str, stored: dict, pool=None) -> None:
    """A 400 naming a class name the job's model would cut short in the job's templates (the job would
    fail on it): that model's own context length when it is loaded, else the one its file holds, else
    (a release not downloaded yet) the longest any FarSLIP model reads."""
    from engine.dense.text import refuse_names_cut_short
    from engine.models.clip import LONG_CONTEXT
    from engine.models.loader import count_tokens, text_context_of, tokenizer_for

    model, arch = stored["model"], stored["arch"]
    if pool is not None and pool.has(model, arch):
        loaded = pool.get(model, arch)
        context, counter = loaded.context_length, loaded.token_counts
    else:
        def context():  # (its file is read only when a name may be too long)
            try:
                return text_context_of(model) or LONG_CONTEXT
            except Exception:  # noqa: BLE001 - a file that cannot be read is the job's to report, as before
                return LONG_CONTEXT

        # (every FarSLIP model reads CLIP's BPE tokens)
        counter = lambda texts: count_tokens(tokenizer_for(arch or "ViT-B-16"), texts)  # noqa: E731
    try:
        refuse_names_cut_short(names, template_set, context, counter)
    except InputError as exc:
        raise HTTPException(400, str(exc)) from None


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


def _stored(body, store, settings, pool, check) -> dict:
    """Resolve the input and the model (folder policy), run `check(path)` on the raster (FarSLIPError
    → 400) and return what the store keeps and the worker runs: the validated body as JSON and the
    resolved paths."""
    path = resolve_input(body.input, store, settings)
    try:
        check(path)
    except FarSLIPError as exc:
        raise HTTPException(400, str(exc)) from None
    model, arch = resolve_model(body.model, body.arch, settings, pool)
    return {"body": body.model_dump(mode="json"), "input": path, "model": model, "arch": arch}


def prepare_segment(body: SegmentRequest, store, settings, pool=None) -> dict:
    """Check everything that can be checked without the model — the raster opened once, with the
    job's area, and its working grid held against the pixel budget; class names against the model's
    text encoder; return what the worker runs."""
    from engine.dense.segment import segmented_classes

    body = body.model_copy(update={"classes": taught_ref(body.classes, store, settings)})
    upsampler = body.upsampler
    plain = body.model_copy(update={"upsampler": None})  # the up-sampler is checked below, under the folder policy
    try:
        plain.check()
    except FarSLIPError as exc:
        raise HTTPException(400, str(exc)) from None

    def check(path):
        with plain.open_source(path, inspect_pixels=False) as source:
            check_pixel_budget(source, settings.max_pixels)
            source.probe()

    stored = _stored(plain, store, settings, pool, check)
    options = plain.inference_options()
    check_names_fit(segmented_classes(plain.prompts, options)[0].names, options.template_set, stored, pool)
    stored["body"]["upsampler"] = upsampler
    stored["upsampler"] = check_upsampler(upsampler, stored["model"], stored["arch"], settings) if upsampler else None
    return stored


def taught_ref(classes, store, settings):
    """`classes`, with an '@' reference to classes taught from labels made the file's path."""
    if isinstance(classes, str) and classes.startswith("@"):
        return "@" + taught_classes_path(classes[1:], store, settings)
    return classes


def run_classes(classes, store, settings) -> "PromptSet | TaughtClasses":
    """The classes of a request as a run takes them (a bad list or taught-classes file: 400)."""
    try:
        return read_run_classes(taught_ref(classes, store, settings))
    except FarSLIPError as exc:
        raise HTTPException(400, str(exc)) from None


def taught_classes_path(ref: str, store, settings) -> str:
    """The file of `@job:<id>` (a finished teach job of this engine), `@upload:<id>` (a file sent with
    POST /v1/classes) or `@/abs/SITE.classes.json` (folder policy applied)."""
    if ref.startswith("upload:"):
        path = store.upload_path(ref[7:])
        if path is None:
            raise HTTPException(404, f"no upload {shown(ref[7:])} (expired, deleted or never sent)")
        if not path.name.endswith(TAUGHT_SUFFIX):
            raise HTTPException(400, f"upload {ref[7:]} is a raster, not taught classes (send those with "
                                     "POST /v1/classes)")
        return str(path)
    if ref.startswith("job:"):
        job = store.get(ref[4:])
        if job is None or job.kind != "teach":
            raise HTTPException(404, f"no teach job {shown(ref[4:])}")
        if job.state != "done":
            raise HTTPException(409, f"teach job {job.id} is {job.state}; its classes are ready once it is done")
        return str(store.job_dir(job.id) / "out" / f"result{TAUGHT_SUFFIX}")
    if not ref.endswith(TAUGHT_SUFFIX):
        raise HTTPException(400, f"'@' names taught classes: '@job:<id>', '@upload:<id>' or a path ending in "
                                 f"{TAUGHT_SUFFIX}")
    return str(allowed_path(ref, settings, what="taught classes"))


def _polygons(items, what: str) -> tuple[list, list[str]]:
    import shapely

    geoms = []
    for i, item in enumerate(items):
        try:
            geom = shapely.from_wkt(item.wkt)
        except NotImplementedError:  # GEOS reads no curves
            raise HTTPException(400, f"{what}.{i}.wkt has curves (a CurvePolygon or MultiSurface): send it as a "
                                     f"Polygon or MultiPolygon, its curves made straight segments") from None
        except shapely.errors.ShapelyError:
            raise HTTPException(400, f"{what}.{i}.wkt is not valid WKT") from None
        if geom is None or geom.geom_type not in ("Polygon", "MultiPolygon") or geom.is_empty:
            raise HTTPException(400, f"{what}.{i}.wkt must be a non-empty Polygon or MultiPolygon")
        try:
            refuse_far_coordinates(geom, f"{what}.{i}.wkt")
        except InputError as exc:
            raise HTTPException(400, str(exc)) from None
        geoms.append(geom)
    return geoms, [item.label for item in items]


def prepare_teach(body: TeachRequest, store, settings, pool=None) -> dict:
    """Refuse now what the job would fail on: classes, the raster, and labels of which none can teach
    (none names a class, none overlaps the raster)."""
    from engine.dense import PromptSet, preset
    from engine.dense.segment import segmented_classes
    from engine.geo.teach import place_labels

    geoms, values = _polygons(body.labels, "labels")

    if body.labels_crs is not None:
        parse_crs(body.labels_crs, "labels_crs")

    def check(path):
        lines = [body.classes] if isinstance(body.classes, str) else list(body.classes)
        if any(line.strip().startswith("@") for line in lines):
            raise InputError("classes names the classes to teach ('water; grass; roof'), not taught classes ('@…')")
        prompts = PromptSet.parse(body.classes)
        with body.open_source(path, inspect_pixels=False) as source:
            source.probe()
            if body.labels_crs:
                source.user_crs(body.labels_crs, "the labels")
            place_labels(source, prompts, geoms, values, body.labels_crs)

    stored = _stored(body, store, settings, pool, check)
    options = preset(body.preset)
    check_names_fit(segmented_classes(body.classes, options)[0].names, options.template_set, stored, pool)
    return stored


def prepare_accuracy(body: AccuracyRequest, store, settings, pool=None) -> dict:
    """Refuse now what the job would fail on: no such finished segmentation, reference polygons of which
    none names one of its classes or none reaches its extent."""
    from engine.geo.accuracy import check_reference

    geoms, values = _polygons(body.reference, "reference")
    if body.reference_crs is not None:
        parse_crs(body.reference_crs, "reference_crs")
    job = store.get(body.job)
    if job is None or job.kind != "segment":
        raise HTTPException(404, f"no segmentation job {body.job}")
    if job.state != "done":
        raise HTTPException(409, f"segmentation job {body.job} is {job.state}; check it once it is done")
    class_raster = store.job_dir(job.id) / "out" / "result_classes.tif"
    if not class_raster.is_file():  # (deleted a moment ago)
        raise HTTPException(404, f"no segmentation job {body.job}")
    try:
        check_reference(str(class_raster), geoms, values, body.reference_crs, _accuracy_about(body.job))
    except FarSLIPError as exc:
        raise HTTPException(400, str(exc)) from None
    return {"body": body.model_dump(mode="json"), "class_raster": str(class_raster)}


def _accuracy_about(job_id: str) -> dict:
    """How an accuracy report names the class raster (the engine's own path means nothing to a client)."""
    return {"class_raster": f"result_classes.tif of job {job_id}", "job": job_id}


def teach_handler(pool):
    def run(request: dict, ctx) -> dict:
        from engine.dense import Segmenter, preset
        from engine.geo.teach import teach

        body = TeachRequest.model_validate(request["body"])
        options = preset(body.preset).with_overrides(global_bias=body.global_bias)
        segmenter = Segmenter(job_model(pool, request, ctx), body.classes, options)
        geoms, values = _polygons(body.labels, "labels")
        with body.open_source(request["input"]) as source:
            taught = teach(segmenter, source, geoms, values, body.labels_crs, {"labels": f"{len(geoms)} polygons"})
        ctx.out_dir.mkdir(parents=True, exist_ok=True)
        taught.save(ctx.out_dir / f"result{TAUGHT_SUFFIX}")
        return {"alpha": taught.alpha, "taught": sorted(taught.prototypes), **taught.made}

    return run


def accuracy_handler():
    def run(request: dict, ctx) -> dict:
        from engine.geo.accuracy import write_accuracy

        body = AccuracyRequest.model_validate(request["body"])
        geoms, values = _polygons(body.reference, "reference")
        if not Path(request["class_raster"]).exists():
            raise InputError(f"segmentation job {body.job} was deleted before this job could start")
        return write_accuracy(request["class_raster"], geoms, values, body.reference_crs, str(ctx.out_dir),
                              _accuracy_about(body.job))

    return run


def prepare_grid(body: GridRequest, store, settings, pool=None) -> dict:
    body = body.model_copy(update={"classes": taught_ref(body.classes, store, settings)})

    def check(path):
        read_run_classes(body.classes)
        body.check_area()
        if body.cell_m is None and body.cell_px is None:
            raise InputError("give cell_m (metres) or cell_px (pixels)")
        from engine.geo.scenes import cell_size_px

        with RasterSource(path, inspect_pixels=False, **body.area_arguments()) as source:
            source.probe()
            cell_size_px(source, body.cell_m, body.cell_px)  # a cell under 8 pixels is refused here, not later

    from engine.dense import PromptSet
    from engine.dense.scenes import SCENE_TEMPLATES
    from engine.dense.segment import segmented_classes

    stored = _stored(body, store, settings, pool, check)
    classes = read_run_classes(body.classes)
    if isinstance(classes, PromptSet):  # (taught classes are checked as a segmentation's, see SceneClassifier)
        check_names_fit(classes.names, SCENE_TEMPLATES, stored, pool)
    else:
        options = classes.segment_options()
        check_names_fit(segmented_classes(classes, options)[0].names, options.template_set, stored, pool)
    return stored


def prepare_search(body: SearchRequest, store, settings, pool=None) -> dict:
    from engine.dense.prompts import query_prompts

    def check(path):
        query_prompts(body.query)
        body.check_area()
        probe_area(path, gsd=body.gsd, **body.area_arguments())

    from engine.geo.search import QUERY_TEMPLATES

    stored = _stored(body, store, settings, pool, check)
    check_names_fit(query_prompts(body.query).names, QUERY_TEMPLATES, stored, pool)
    return stored


def grid_handler(pool):
    def run(request: dict, ctx) -> dict:
        from engine.dense.scenes import SceneClassifier
        from engine.geo.scenes import GridJob, classify_grid

        body = GridRequest.model_validate(request["body"])
        classifier = SceneClassifier(job_model(pool, request, ctx), read_run_classes(body.classes))
        job = GridJob(input=request["input"], out_dir=str(ctx.out_dir), cell_m=body.cell_m,
                      cell_px=body.cell_px, name="result", **body.area_arguments())
        return classify_grid(job, classifier, progress=ctx.progress, cancel=ctx.cancel)

    return run


def search_handler(pool):
    def run(request: dict, ctx) -> dict:
        from engine.geo.search import SearchJob, search_raster

        body = SearchRequest.model_validate(request["body"])
        job = SearchJob(input=request["input"], out_dir=str(ctx.out_dir), query=body.query,
                        top_k=body.top_k, gsd=body.gsd, heatmap=body.heatmap, name="result", **body.area_arguments())
        return search_raster(job, job_model(pool, request, ctx), progress=ctx.progress,
                             cancel=ctx.cancel)

    return run


def label(body: LabelRequest, pool, store, settings) -> dict:
    """Region labelling, synchronously (small requests: at most 512 regions)."""
    import time

    from engine.dense.scenes import SceneClassifier
    from engine.geo.regions import Region
    from engine.geo.scenes import label_regions

    started = time.perf_counter()
    if body.crs is not None and body.crs != "pixel":
        parse_crs(body.crs, "crs")
    path = resolve_input(body.input, store, settings)
    classes = run_classes(body.classes, store, settings)
    model_name, arch = resolve_model(body.model, body.arch, settings, pool)
    refuse_uncached(model_name, arch, pool)
    try:
        regions = [Region(bbox=tuple(r.bbox) if r.bbox else None,
                          polygon=tuple(tuple(p[:2]) for p in r.polygon) if r.polygon else None) for r in body.regions]
        # (a cached model not loaded yet is loaded here, in this request's worker thread)
        classifier = SceneClassifier(pool.get(model_name, arch), classes, template_set=body.template_set)
        with only_drivers(drivers_for(Path(path))), \
                RasterSource(path, tuple(body.bands) if body.bands else None, nodata=body.nodata) as source:
            labels = label_regions(source, regions, classifier, crs=body.crs)
    except FarSLIPError as exc:
        raise HTTPException(400, str(exc)) from None
    return {"classes": classifier.classes, "regions": labels, "model": model_name,
            "seconds": round(time.perf_counter() - started, 4)}


def refuse_uncached(name: str, arch: str | None, pool) -> None:
    """A 409 when `name` is a release not in the engine's model cache: a synchronous request does not
    wait minutes for a download; the client downloads it first (a job with progress)."""
    from engine.models import hub
    from engine.models.registry import find_release

    release = find_release(name)
    if release is None or pool.has(name, arch) or hub.cached_path(release) is not None:
        return
    raise HTTPException(409, f"model {release.name} is not downloaded yet: download it first with POST "
                             f"/v1/models/{release.name}/download (a job with progress), then ask again")


def job_model(pool, request: dict, ctx):
    """The job's model from the pool. On its first use the job says so ("loading model NAME…"), and a
    release not yet in the HF cache is fetched first with the bytes in the message (cancellable)."""
    name, arch = request["model"], request["arch"]
    if pool.has(name, arch):
        return pool.get(name, arch)
    from engine import config
    from engine.models import hub
    from engine.models.registry import find_release

    release = find_release(name)
    shown = release.name if release else Path(name).name
    if release is not None and arch in (None, release.arch) and not config.hub_offline() \
            and hub.cached_path(release) is None:
        hub.fetch(release, progress=lambda done, total: ctx.bytes_progress(
            done, total, prefix=f"downloading model {shown}: ", fraction=False), cancel=ctx.cancel)
    ctx.say(f"loading model {shown}…")
    return pool.get(name, arch)


def download_handler():
    """A model download job: the release's file into the HF cache, bytes done / total as progress."""
    def run(request: dict, ctx) -> dict:
        from engine.models import hub
        from engine.models.registry import find_release

        release = find_release(request["name"])
        if release is None:
            raise InputError(f"unknown model '{request['name']}'")
        path = hub.fetch(release, progress=ctx.bytes_progress, cancel=ctx.cancel)
        return {"model": release.name, "file": release.filename, "bytes": path.stat().st_size}

    return run


def segment_handler(pool):
    def run(request: dict, ctx) -> dict:
        from engine.dense import Segmenter
        from engine.geo.pipeline import segment_raster

        body = SegmentRequest.model_validate(request["body"])
        segmenter = Segmenter(job_model(pool, request, ctx), body.prompts,
                              body.inference_options(upsampler=request["upsampler"]))
        return segment_raster(body.raster_job(request["input"], str(ctx.out_dir), name="result"), segmenter,
                              progress=ctx.progress, cancel=ctx.cancel)

    return run
