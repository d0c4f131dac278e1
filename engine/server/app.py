"""The FastAPI application: routes, auth, limits, request log. `create_app(settings)` builds it.

Routes (all but /v1/health need `Authorization: Bearer <token>`, /openapi.json included):
  GET  /v1/health                      version, device, loaded models, queue length (no token)
  GET  /v1/models                      releases (cached or not) and loaded models
  POST /v1/models/{name}/download      fetch a release into the engine's HF cache (a "download" job,
                                       run by its own worker: segmentation jobs go on meanwhile)
  POST /v1/uploads                     raw GeoTIFF body, streamed to disk (size cap, total quota) → upload_id
  POST /v1/classes                     a taught-classes file (JSON body), kept like an upload → upload_id;
                                       jobs take it as "classes": "@upload:<id>" (for remote engines)
  DELETE /v1/uploads/{id}              remove an upload now (they also expire with the jobs)
  POST /v1/jobs/segment                segmentation job from a path or an upload → 202 job id
  POST /v1/jobs/grid                   scene classification on a grid of cells (job)
  POST /v1/jobs/search                 text search: heat map + top-k boxes (job)
  POST /v1/jobs/teach                  classes taught from labelled polygons → result.classes.json (job)
  POST /v1/jobs/accuracy               a segmentation job's classes against reference polygons (job)
  POST /v1/regions/label               candidate classes ranked for boxes/polygons (synchronous)
  POST /v1/prompts                     how a class list is read: names, synonyms, colours
  GET  /v1/jobs, /v1/jobs/{id}         state, progress 0-1, message, revision; files and summary when done
                                       (?wait=S[&since=R]: answer once the job ends or its revision is not R)
  GET  /v1/jobs/{id}/events            server-sent events: the status now and after each change
  POST /v1/jobs/{id}/cancel            stop a queued or running job (within one batch)
  DELETE /v1/jobs/{id}                 cancel and forget a job and its files
  GET  /v1/jobs/{id}/files/{name}      a result file (only once the job is done)
  GET  /openapi.json                   the OpenAPI description of all this

A loopback engine answers only requests whose Host header names a loopback address (a web page that
rebinds its own name to 127.0.0.1 cannot reach it); a remote one takes the hosts given to it.
A full data folder answers 507, one that cannot be written 503, naming the folder; nothing is
half-written and the same request succeeds once the folder can take it again.

A job or upload id that is not one this engine makes (32 lowercase hex digits) is a 404 before anything
is looked up. Deleting a job or an upload that a queued or running job uses answers 409 naming that job.
A result file gone since the job finished answers 410. The route handlers never wait on the event
loop's thread for a model to load or a file to be written; a model release not yet downloaded is a
409 for region labelling (download it with POST /v1/models/{name}/download). When the server stops,
waiting long-polls are answered and event streams end at once (`JobWatch.close`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import mimetypes
import os
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import ClientDisconnect
from starlette.routing import compile_path

from engine import __version__, config
from engine.errors import FarSLIPError
from engine.job import describe
from engine.server import handlers, raster_policy
from engine.server.auth import token_matches
from engine.server.gate import Gate
from engine.server.ids import is_id, new_id, shown
from engine.server.limits import RequestLimitsAndLog
from engine.server.models_pool import ModelPool
from engine.server.runner import JobRunner, QueueFull
from engine.server.sending import FileSending
from engine.server.schemas import (AccuracyRequest, Error, GridRequest, Health, JobCreated, JobStatus, LabelRequest,
                                   LabelResponse, PromptsRequest, SearchRequest, SegmentRequest, TeachRequest,
                                   UploadCreated, ClassesUploaded)
from engine.server.quota import UploadQuota
from engine.server.store import JobStore, StorageUnavailable, storage_errors
from engine.taught_format import TaughtFile
from engine.server.watch import MAX_WAIT_S, JobWatch, status_events, wait_for_change
from engine.server.wording import for_clients

log = logging.getLogger("farslip.api")


@dataclass
class ServerSettings:
    token: str
    host: str = "127.0.0.1"
    port: int = 8765
    data_dir: Path = field(default_factory=config.data_dir)
    allow_roots: list[Path] = field(default_factory=list)
    default_model: str = config.DEFAULT_MODEL
    default_arch: str | None = None
    device: str | None = None
    precision: str | None = None
    compile: bool = False  # torch.compile each model's dense forward (slow first job, faster after)
    max_upload_mb: float = 4096
    max_uploads_mb: float = 16384  # all uploads on record together
    max_body_kb: float = 1024
    job_ttl_s: float = 24 * 3600
    max_queue: int = 8
    max_pixels: float | None = 2e9  # working-grid pixels of one segmentation job (None: no limit)
    allowed_hosts: list[str] | None = None  # Host header values answered (default: loopback names, or any when remote)

    @property
    def remote(self) -> bool:
        return self.host not in LOOPBACK_HOSTS

    def hosts(self) -> list[str]:
        if self.allowed_hosts is not None:
            return list(self.allowed_hosts)
        return ["*"] if self.remote else list(LOOPBACK_HOSTS)


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


class ValidationProblem(BaseModel):
    """A request body or parameter that does not fit the schema: the first problem in one line, then all."""

    detail: str
    errors: list[dict]


ERRORS = {400: {"model": Error}, 401: {"model": Error}, 403: {"model": Error}, 404: {"model": Error},
          409: {"model": Error}, 413: {"model": Error}, 422: {"model": ValidationProblem}, 429: {"model": Error},
          503: {"model": Error}, 507: {"model": Error}}
JOB_KINDS = ("segment", "grid", "search", "teach", "accuracy")  # POST /v1/jobs/{kind}: not job ids
MAX_DOWNLOADS_QUEUED = 4
RESERVE_STEP = 8 * 2**20  # quota reserved at a time for an upload without a Content-Length
WRITE_BYTES = 2**20  # an upload is written a MB at a time, off the event loop
UPLOAD_IDLE_S = 60.0  # an upload whose client sends nothing for this long is dropped (its quota freed)
LABELS_AT_ONCE, LABELS_WAITING = 2, 8  # region labelling requests running at once, and waiting beyond them


async def within(chunks: AsyncIterator[bytes], idle_s: float) -> AsyncIterator[bytes]:
    """The chunks of a request body; TimeoutError when the client sends none for `idle_s` seconds."""
    stream = chunks.__aiter__()
    while True:
        try:
            yield await asyncio.wait_for(stream.__anext__(), idle_s)
        except StopAsyncIteration:
            return


def create_app(settings: ServerSettings) -> FastAPI:
    from engine.geo.crs_text import forbid_network

    forbid_network()  # no CRS a client names makes PROJ fetch a grid
    store = JobStore(settings.data_dir, settings.job_ttl_s,
                     owner=f"pid {os.getpid()}, http://{settings.host}:{settings.port}")  # (named to a second engine)
    watch = JobWatch()
    store.on_change(watch.notify)
    pool = ModelPool(settings.device, settings.precision, settings.compile)
    jobs = {"segment": handlers.segment_handler(pool), "grid": handlers.grid_handler(pool),
            "search": handlers.search_handler(pool), "teach": handlers.teach_handler(pool),
            "accuracy": handlers.accuracy_handler()}
    runner = JobRunner(store, {kind: handlers.served(run, store, settings) for kind, run in jobs.items()},
                       settings.max_queue)
    # Downloads have their own worker and queue: minutes of network never hold up the compute jobs.
    downloads = JobRunner(store, {"download": handlers.download_handler()}, MAX_DOWNLOADS_QUEUED,
                          name="farslip-downloads")
    labelling = Gate("region labelling", LABELS_AT_ONCE, LABELS_WAITING)
    downloading: dict[str, str] = {}  # release name → its queued or running download job
    downloading_lock = threading.Lock()
    stop_expiry = threading.Event()

    def expire_loop() -> None:
        while not stop_expiry.wait(60):
            try:
                store.expire()
            except StorageUnavailable as exc:
                log.warning("expiry skipped: %s", exc)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        # The job store and the worker live as long as the process: a job still running when the
        # process ends is marked failed (and its partial files removed) at the next start.
        store.hold()  # (held from create_app on; again when the app is started a second time)
        stop_expiry.clear()
        watch.reopen()
        thread = threading.Thread(target=expire_loop, name="farslip-expiry", daemon=True)
        thread.start()
        yield
        watch.close()  # (`farslip serve` closes it earlier, as soon as it starts to stop)
        stop_expiry.set()
        store.release()  # another engine may serve the data folder now

    app = FastAPI(title="FarSLIP engine", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None,  # served below, behind the token
                  description="Open-vocabulary segmentation of remote-sensing imagery by typed class names.")
    app.state.store, app.state.runner, app.state.pool, app.state.settings = store, runner, pool, settings
    app.state.downloads = downloads
    app.state.watch = watch
    app.add_middleware(RequestLimitsAndLog, max_body=int(settings.max_body_kb * 1024),
                       unlimited_paths=("/v1/uploads",))
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=settings.hosts())  # outermost: checked first

    @app.exception_handler(FarSLIPError)
    async def user_error(_request: Request, exc: FarSLIPError):
        status = getattr(exc, "status", 400)  # a full data folder 507, a job in use 409, ...
        return JSONResponse(json_safe({"detail": for_clients(str(exc))}), status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        headers = dict(exc.headers or {})
        detail = str(exc.detail)
        if exc.status_code == 405 and exc.detail == "Method Not Allowed":  # Starlette's, not one of ours
            headers["Allow"] = ", ".join(allowed_methods(request.url.path))
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":  # FastAPI's
            detail = ("the request body is not JSON this engine reads: send plain UTF-8 JSON (not compressed), "
                      "nested at most a few hundred levels deep")
        return JSONResponse({"detail": json_safe(for_clients(detail))}, status_code=exc.status_code,
                            headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError):
        # The errors echo the input: NaN, Infinity or a lone surrogate there cannot be written as JSON.
        return JSONResponse(json_safe({"detail": describe(exc), "errors": exc.errors()}), status_code=422)

    bearer = HTTPBearer(auto_error=False)

    async def require_token(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        header = f"Bearer {credentials.credentials}" if credentials else None
        if not token_matches(settings.token, header):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    def allowed_methods(path: str) -> list[str]:
        """Every method some route takes at `path` (Starlette's 405 names only the first route's)."""
        if path == "/openapi.json":
            return ["GET"]
        paths = app.openapi()["paths"]
        if path in paths:  # a fixed path (POST /v1/jobs/segment) wins over a template (/v1/jobs/{job_id})
            return sorted(method.upper() for method in paths[path])
        return sorted({method.upper() for template, operations in paths.items()
                       if compile_path(template)[0].match(path) for method in operations})

    device = settings.device or config.default_device()
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"

    @app.get("/v1/health", response_model=Health, tags=["engine"])
    async def health() -> Health:
        """Answered on the event loop itself: no worker thread is needed, however busy the engine is."""
        return Health(version=__version__, device=device, models_loaded=pool.loaded(),
                      queue_length=runner.queue_length, running=runner.running,
                      path_formats=list(raster_policy.PATH_FORMATS))

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(require_token)])
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    api = APIRouter(prefix="/v1", dependencies=[Depends(require_token)], responses=ERRORS)

    @api.get("/models", tags=["engine"])
    def models() -> dict:
        from engine.models import hub
        from engine.models.registry import RELEASES

        return {"default": settings.default_model,
                "releases": [{"name": r.name, "arch": r.arch, "file": r.filename, "description": r.description,
                              "cached": hub.cached_path(r) is not None} for r in RELEASES.values()],
                "loaded": pool.loaded()}

    @api.post("/models/{name}/download", status_code=202, tags=["engine"],
              responses={200: {"description": "already in the cache: `{\"id\": null, \"cached\": true}`"},
                         202: {"description": "a download job: `{\"id\": \"<job id>\"}`"}})
    def download_model(name: str) -> JSONResponse:
        """Fetch a release into the engine's Hugging Face cache as a job of kind "download" (progress = bytes
        done / total); answered at once, with no job, when it is already cached. Asking again while it
        downloads answers the same job."""
        from engine.models import hub
        from engine.models.registry import RELEASES, find_release

        release = find_release(name)
        if release is None:
            raise HTTPException(404, f"unknown model '{name[:200]}' (releases: {', '.join(RELEASES)})")
        if hub.cached_path(release) is not None:
            return JSONResponse({"id": None, "cached": True}, status_code=200)
        with downloading_lock:
            job = store.get(downloading.get(release.name, ""))
            if job is None or job.state not in ("queued", "running"):
                try:
                    downloading[release.name] = downloads.submit("download", {"name": release.name})
                except QueueFull:
                    raise HTTPException(429, f"{MAX_DOWNLOADS_QUEUED} downloads are waiting already; try again "
                                             f"later", headers={"Retry-After": "10"}) from None
            job_id = downloading[release.name]
        return JSONResponse({"id": job_id, "state": "queued"}, status_code=202, headers={"X-Job-Id": job_id})

    quota = UploadQuota(store, int(settings.max_uploads_mb * 1024 * 1024))

    def over_quota(held: tuple[int, int]) -> HTTPException:
        kept, arriving = held
        if arriving:
            return HTTPException(413, f"the engine's upload quota ({settings.max_uploads_mb:g} MB) is taken by "
                                      f"{kept / 2**20:,.0f} MB of uploads and {arriving / 2**20:,.0f} MB of uploads "
                                      f"still arriving: try again when they are done, or delete uploads no "
                                      f"longer needed (DELETE /v1/uploads/{{id}})", headers={"Retry-After": "30"})
        return HTTPException(413, f"the engine holds {kept / 2**20:,.0f} MB of uploads, its quota is "
                                  f"{settings.max_uploads_mb:g} MB: delete uploads no longer needed "
                                  f"(DELETE /v1/uploads/{{id}}) or wait for them to expire")

    def keep_upload(partial: Path, final: Path, upload_id: str, size: int, reserved: int) -> None:
        """Put a received upload in place and on record (its reservation becomes its record)."""
        with storage_errors(store.data_dir):
            os.replace(partial, final)
            try:
                quota.record(upload_id, final, size, reserved)
            except BaseException:
                final.unlink(missing_ok=True)
                raise

    @api.post("/uploads", status_code=201, response_model=UploadCreated, tags=["inputs"],
              openapi_extra={"requestBody": {"content": {"application/octet-stream": {"schema": {
                  "type": "string", "format": "binary"}}}, "required": True}})
    async def upload(request: Request) -> UploadCreated:
        """A GeoTIFF as the raw body, streamed to disk: the bytes are reserved in the uploads' quota
        before they are written (413 when over it), and written and checked off the event loop."""
        cap = int(settings.max_upload_mb * 1024 * 1024)
        declared = request.headers.get("content-length")
        declared = int(declared) if declared is not None and declared.isdigit() else None
        if declared is not None and declared > cap:
            raise HTTPException(413, f"upload larger than the {settings.max_upload_mb:g} MB limit")
        upload_id = new_id()
        partial = store.uploads_dir / f".{upload_id}.partial"
        final = store.uploads_dir / f"{upload_id}.tif"
        size, reserved, recorded, fh = 0, 0, False, None

        async def hold(total: int) -> None:
            """Reserve quota for the first `total` bytes (a step more without a Content-Length)."""
            nonlocal reserved
            if total <= reserved:
                return
            want = max(total, declared) if declared is not None else min(cap, total + RESERVE_STEP)
            if not await run_in_threadpool(quota.reserve, want - reserved):
                if declared is None and await run_in_threadpool(quota.reserve, total - reserved):
                    want = total  # room for what came, not for a whole step more
                elif reserved == 0:
                    raise over_quota(await run_in_threadpool(quota.held))
                else:
                    raise HTTPException(413, "upload larger than the room left in the engine's upload quota")
            reserved = want

        try:
            await hold(max(declared or 0, 1))
            with storage_errors(store.data_dir):
                fh = await run_in_threadpool(open, partial, "wb")
                buffer = bytearray()
                async for chunk in within(request.stream(), UPLOAD_IDLE_S):
                    size += len(chunk)
                    if size > cap:
                        raise HTTPException(413, f"upload larger than the {settings.max_upload_mb:g} MB limit")
                    await hold(size)
                    buffer += chunk
                    if len(buffer) >= WRITE_BYTES:
                        await run_in_threadpool(fh.write, buffer)
                        buffer = bytearray()
                if buffer:
                    await run_in_threadpool(fh.write, buffer)
                await run_in_threadpool(fh.close)
            if size == 0:
                raise HTTPException(400, "empty upload: send the GeoTIFF bytes as the request body")
            info = await run_in_threadpool(raster_policy.raster_info, partial)
            await run_in_threadpool(keep_upload, partial, final, upload_id, size, reserved)
            recorded = True
        except ClientDisconnect:
            log.info("upload %s: client disconnected after %d bytes", upload_id, size)
            raise HTTPException(400, "client disconnected during the upload") from None
        except TimeoutError:
            log.info("upload %s: the client sent nothing for %.0f s after %d bytes", upload_id, UPLOAD_IDLE_S, size)
            raise HTTPException(408, f"the upload sent nothing for {UPLOAD_IDLE_S:g} s (after {size} bytes): "
                                     f"send it again") from None
        finally:  # quick, and done even when the request is cancelled: no await here
            if fh is not None:
                fh.close()
            partial.unlink(missing_ok=True)
            if not recorded:
                quota.release(reserved)
        return UploadCreated(upload_id=upload_id, size=size, **info)

    @api.post("/classes", status_code=201, response_model=ClassesUploaded, tags=["inputs"],
              openapi_extra={"requestBody": {"content": {"application/json": {
                  "schema": TaughtFile.model_json_schema()}}, "required": True}})
    async def upload_classes(request: Request) -> ClassesUploaded:
        """A taught-classes file (`farslip classes learn`, the plugin's Teach from labels) for an engine
        that cannot read the client's files: checked, then kept like an upload (quota, expiry,
        DELETE /v1/uploads/{id}); jobs name it `"classes": "@upload:<upload_id>"`."""
        from engine.dense.taught import TaughtClasses
        from engine.taught_format import SUFFIX

        try:
            body = await request.body()
        except ClientDisconnect:
            raise HTTPException(400, "client disconnected while sending the classes") from None
        if not body:
            raise HTTPException(400, "empty body: send the content of a .classes.json file")
        # a FarSLIPError: 400 naming the problem
        taught = await run_in_threadpool(TaughtClasses.from_json, body, "the body")
        if not await run_in_threadpool(quota.reserve, len(body)):
            raise over_quota(await run_in_threadpool(quota.held))
        upload_id = new_id()
        final = store.uploads_dir / f"{upload_id}{SUFFIX}"
        partial = store.uploads_dir / f".{upload_id}.partial"

        def keep() -> None:
            with storage_errors(store.data_dir):
                partial.write_bytes(body)
            keep_upload(partial, final, upload_id, len(body), len(body))

        try:
            await run_in_threadpool(keep)
        except BaseException:
            quota.release(len(body))
            raise
        finally:
            partial.unlink(missing_ok=True)
        return ClassesUploaded(upload_id=upload_id, size=len(body), classes=taught.prompts.labels,
                               model=taught.model)

    @api.delete("/uploads/{upload_id}", status_code=204, tags=["inputs"])
    def delete_upload(upload_id: str) -> None:
        """Forget the upload and its file now; 409 naming the job while a queued or running job reads it."""
        if not store.delete_upload(upload_id):  # a malformed id is simply not found
            raise HTTPException(404, f"no upload {shown(upload_id)}")

    def submit(kind: str, prepared: dict) -> JSONResponse:
        try:
            job_id = runner.submit(kind, prepared)
        except QueueFull:
            raise HTTPException(429, f"the job queue is full ({settings.max_queue} waiting); try again later",
                                headers={"Retry-After": "10"}) from None
        return JSONResponse({"id": job_id, "state": "queued"}, status_code=202, headers={"X-Job-Id": job_id})

    @api.post("/jobs/segment", status_code=202, response_model=JobCreated, tags=["jobs"])
    def create_segment_job(body: SegmentRequest) -> JSONResponse:
        """Segment a raster by class names: class COG, optional scores, polygons, summary."""
        return submit("segment", handlers.prepare_segment(body, store, settings, pool))

    @api.post("/jobs/grid", status_code=202, response_model=JobCreated, tags=["jobs"])
    def create_grid_job(body: GridRequest) -> JSONResponse:
        """Zero-shot scene classification on a grid of square cells: a polygon grid with class and score."""
        return submit("grid", handlers.prepare_grid(body, store, settings, pool))

    @api.post("/jobs/search", status_code=202, response_model=JobCreated, tags=["jobs"])
    def create_search_job(body: SearchRequest) -> JSONResponse:
        """Free-text search: a similarity heat-map raster and the top-k boxes."""
        return submit("search", handlers.prepare_search(body, store, settings, pool))

    @api.post("/jobs/teach", status_code=202, response_model=JobCreated, tags=["jobs"])
    def create_teach_job(body: TeachRequest) -> JSONResponse:
        """Teach classes from labelled polygons: `result.classes.json`, used as `"classes": "@job:<id>"`."""
        return submit("teach", handlers.prepare_teach(body, store, settings, pool))

    @api.post("/jobs/accuracy", status_code=202, response_model=JobCreated, tags=["jobs"])
    def create_accuracy_job(body: AccuracyRequest) -> JSONResponse:
        """A finished segmentation job against reference polygons: accuracy.json, confusion.csv/.png."""
        return submit("accuracy", handlers.prepare_accuracy(body, store, settings))

    @api.post("/prompts", tags=["engine"])
    def parse_prompts(body: PromptsRequest) -> dict:
        """How the engine reads a class list, or the classes of a taught-classes file ('@job:<id>',
        '@/abs/SITE.classes.json'): names, synonyms and each class's stable colour (or a 400)."""
        from engine.dense import PromptSet
        from engine.geo.colours import class_colours, hex_colour

        classes = handlers.run_classes(body.classes, store, settings)
        prompts = classes if isinstance(classes, PromptSet) else classes.prompts
        colours = class_colours(prompts.classes)
        return {"classes": [{"index": i, "name": c.label, "synonyms": list(c.names),
                             "colour": hex_colour(colours[i])} for i, c in enumerate(prompts.classes)]}

    @api.post("/regions/label", response_model=LabelResponse, tags=["regions"])
    async def label_regions(body: LabelRequest) -> dict:
        """Rank the candidate classes for each box or polygon (each cropped and encoded on its own); a few
        requests at once, a few more waiting (holding no thread), 429 beyond (`engine.server.gate`)."""
        async with labelling.passage():
            return await run_in_threadpool(handlers.label, body, pool, store, settings)

    @api.get("/jobs", response_model=list[JobStatus], tags=["jobs"])
    def list_jobs() -> list[JobStatus]:
        return [status(job) for job in store.list()]

    def no_job(job_id: str) -> HTTPException:
        if job_id in JOB_KINDS:  # `GET /v1/jobs/segment`: that path takes POST, to create a job
            return HTTPException(405, f"/v1/jobs/{job_id} takes POST (to create a {job_id} job)",
                                 headers={"Allow": "POST"})
        return HTTPException(404, f"no job {shown(job_id)}")

    def checked_id(job_id: str) -> str:
        """The job id of a route's path, checked before anything is looked up or any path is built: a
        malformed one (`..`, `.`, junk) is a 404 that touches nothing."""
        if not is_id(job_id):
            raise no_job(job_id)
        return job_id

    def get_job(job_id: str):
        job = store.get(job_id)
        if job is None:
            raise no_job(job_id)
        return job

    def status(job) -> JobStatus:
        done = job.state == "done"
        return JobStatus(id=job.id, kind=job.kind, state=job.state, progress=job.progress, message=job.message,
                         created=job.created, updated=job.updated, expires=job.expires, revision=job.revision,
                         files=job.files if done else [], summary=job.summary if done else None)

    async def read_job(job_id: str):
        return await run_in_threadpool(store.get, job_id)

    @api.get("/jobs/{job_id}", response_model=JobStatus, tags=["jobs"])
    async def job_status(
            job_id: str = Depends(checked_id),
            wait: float | None = Query(None, gt=0, le=MAX_WAIT_S, allow_inf_nan=False,
                                       description="long-poll: answer once the job is done, failed or cancelled "
                                                   "(or, with `since`, once anything changed), at most this many "
                                                   "seconds later; without it, answer at once"),
            since: int | None = Query(None, ge=0, le=2**63 - 1,
                                      description="with `wait`: the revision the client already has; the answer "
                                                  "comes as soon as the job's revision differs from it"),
    ) -> JobStatus:
        """The job's status; with `wait`, once it ends or changes (no thread is held while waiting)."""
        job = await wait_for_change(watch, read_job, job_id, wait, since)
        if job is None:
            raise no_job(job_id)
        return status(job)

    @api.get("/jobs/{job_id}/events", tags=["jobs"], response_class=StreamingResponse,
             responses={200: {"description": "`event: status` with the job's status (`id:` its revision) now "
                                             "and after each change; the stream ends once the job is final",
                              "content": {"text/event-stream": {"schema": {"type": "string"}}}}})
    async def job_events(job_id: str = Depends(checked_id)) -> StreamingResponse:
        """Server-sent events of the job's status, from now until it is done, failed or cancelled."""
        if await read_job(job_id) is None:
            raise no_job(job_id)
        events = status_events(watch, read_job, job_id, lambda job: status(job).model_dump())
        return StreamingResponse(events, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Job-Id": job_id})

    def runner_of(job) -> JobRunner:
        return downloads if job is not None and job.kind == "download" else runner

    @api.post("/jobs/{job_id}/cancel", response_model=JobStatus, tags=["jobs"])
    def cancel_job(job_id: str = Depends(checked_id)) -> JobStatus:
        job = get_job(job_id)
        if job.state in ("queued", "running"):
            runner_of(job).cancel(job_id)
        return status(get_job(job_id))

    @api.delete("/jobs/{job_id}", status_code=204, tags=["jobs"])
    def delete_job(job_id: str = Depends(checked_id)) -> None:
        """Forget the job and its files now; a running job is cancelled and stops within one batch. 409
        naming the job that uses it while a queued or running job reads its files."""
        if not runner_of(store.get(job_id)).delete(job_id):
            raise no_job(job_id)

    @api.get("/jobs/{job_id}/files/{name}", tags=["jobs"],
             responses={200: {"content": {"application/octet-stream": {}}},
                        410: {"model": Error, "description": "the file is gone from the data folder since the job finished"}})
    def job_file(name: str, job_id: str = Depends(checked_id)) -> FileSending:
        """The file, sent from a handle opened before the answer starts (`engine.server.sending`): a delete
        or expiry at the same time cannot break the download half-way; a client that stops reading is
        dropped after a minute."""
        job = get_job(job_id)
        if job.state != "done":
            raise HTTPException(409, f"job {job_id} is {job.state}; files are served once it is done")
        if name not in job.files:
            raise HTTPException(404, f"job {job_id} has no file {shown(name)}")
        try:
            fh = open(store.job_dir(job_id) / "out" / name, "rb")
        except OSError:
            if store.get(job_id) is None:
                raise no_job(job_id) from None
            raise HTTPException(410, f"the file {name} of job {job_id} is gone from the engine's data folder "
                                     f"(removed since the job finished): run the job again") from None

        return FileSending(fh, name, mimetypes.guess_type(name)[0] or "application/octet-stream")

    app.include_router(api)
    return app


def json_safe(value):
    """`value` with everything strict JSON cannot hold made text: NaN and infinities become 'nan'/'inf',
    lone surrogates `\\udXXX` escapes, other objects their str()."""
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {json_safe(str(k)): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return json_safe(str(value))
