"""The FastAPI application: routes, auth, limits, request log. `create_app(settings)` builds it.

Routes (all under /v1, all but /v1/health need `Authorization: Bearer <token>`):
  GET  /v1/health                      version, device, loaded models, queue length (no token)
  GET  /v1/models                      releases (cached or not) and loaded models
  POST /v1/uploads                     raw GeoTIFF body, streamed to disk (size cap) → upload_id
  POST /v1/jobs/segment                segmentation job from a path or an upload → 202 job id
  POST /v1/jobs/grid                   scene classification on a grid of cells (job)
  POST /v1/jobs/search                 text search: heat map + top-k boxes (job)
  POST /v1/regions/label               candidate classes ranked for boxes/polygons (synchronous)
  POST /v1/prompts                     how a class list is read: names, synonyms, colours
  GET  /v1/jobs, /v1/jobs/{id}         state, progress 0-1, message, revision; files and summary when done
                                       (?wait=S[&since=R]: answer once the job ends or its revision is not R)
  GET  /v1/jobs/{id}/events            server-sent events: the status now and after each change
  POST /v1/jobs/{id}/cancel            stop a queued or running job (within one batch)
  DELETE /v1/jobs/{id}                 cancel and forget a job and its files
  GET  /v1/jobs/{id}/files/{name}      a result file (only once the job is done)
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import ClientDisconnect

from engine import __version__, config
from engine.errors import FarSLIPError
from engine.server import handlers, raster_policy
from engine.server.auth import token_matches
from engine.server.limits import RequestLimitsAndLog
from engine.server.models_pool import ModelPool
from engine.server.runner import JobRunner, QueueFull
from engine.server.schemas import (Error, GridRequest, Health, JobCreated, JobStatus, LabelRequest, LabelResponse,
                                   PromptsRequest, SearchRequest, SegmentRequest, UploadCreated)
from engine.server.store import JobStore
from engine.server.watch import MAX_WAIT_S, JobWatch, status_events, wait_for_change

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
    max_body_kb: float = 1024
    job_ttl_s: float = 24 * 3600
    max_queue: int = 8

    @property
    def remote(self) -> bool:
        return self.host not in ("127.0.0.1", "localhost", "::1")


ERRORS = {400: {"model": Error}, 401: {"model": Error}, 403: {"model": Error}, 404: {"model": Error},
          409: {"model": Error}, 413: {"model": Error}, 429: {"model": Error}}


def create_app(settings: ServerSettings) -> FastAPI:
    store = JobStore(settings.data_dir, settings.job_ttl_s)
    watch = JobWatch()
    store.on_change(watch.notify)
    pool = ModelPool(settings.device, settings.precision, settings.compile)
    runner = JobRunner(store, {"segment": handlers.segment_handler(pool, store, settings),
                               "grid": handlers.grid_handler(pool), "search": handlers.search_handler(pool)},
                       settings.max_queue)
    stop_expiry = threading.Event()

    def expire_loop() -> None:
        while not stop_expiry.wait(60):
            store.expire()

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        # The job store and the worker live as long as the process: a job still running when the
        # process ends is marked failed (and its partial files removed) at the next start.
        stop_expiry.clear()
        thread = threading.Thread(target=expire_loop, name="farslip-expiry", daemon=True)
        thread.start()
        yield
        stop_expiry.set()

    app = FastAPI(title="FarSLIP engine", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Open-vocabulary segmentation of remote-sensing imagery by typed class names.")
    app.state.store, app.state.runner, app.state.pool, app.state.settings = store, runner, pool, settings
    app.state.watch = watch
    app.add_middleware(RequestLimitsAndLog, max_body=int(settings.max_body_kb * 1024),
                       unlimited_paths=("/v1/uploads",))

    @app.exception_handler(FarSLIPError)
    async def user_error(_request: Request, exc: FarSLIPError):
        return JSONResponse(json_safe({"detail": str(exc)}), status_code=400)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        # The errors echo the input: NaN, Infinity or a lone surrogate there cannot be written as JSON.
        return JSONResponse(json_safe({"detail": f"{where}: {first.get('msg', 'invalid request')}".strip(": "),
                                       "errors": exc.errors()}), status_code=422)

    bearer = HTTPBearer(auto_error=False)

    async def require_token(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        header = f"Bearer {credentials.credentials}" if credentials else None
        if not token_matches(settings.token, header):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    @app.get("/v1/health", response_model=Health, tags=["engine"])
    def health() -> Health:
        import torch

        device = settings.device or config.default_device()
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return Health(version=__version__, device=device, models_loaded=pool.loaded(),
                      queue_length=runner.queue_length, running=runner.running)

    api = APIRouter(prefix="/v1", dependencies=[Depends(require_token)], responses=ERRORS)

    @api.get("/models", tags=["engine"])
    def models() -> dict:
        from engine.models import hub
        from engine.models.registry import RELEASES

        return {"default": settings.default_model,
                "releases": [{"name": r.name, "arch": r.arch, "file": r.filename, "description": r.description,
                              "cached": hub.cached_path(r) is not None} for r in RELEASES.values()],
                "loaded": pool.loaded()}

    @api.post("/uploads", status_code=201, response_model=UploadCreated, tags=["inputs"],
              openapi_extra={"requestBody": {"content": {"application/octet-stream": {"schema": {
                  "type": "string", "format": "binary"}}}, "required": True}})
    async def upload(request: Request) -> UploadCreated:
        cap = int(settings.max_upload_mb * 1024 * 1024)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > cap:
            raise HTTPException(413, f"upload larger than the {settings.max_upload_mb:g} MB limit")
        upload_id = uuid.uuid4().hex
        partial = store.uploads_dir / f".{upload_id}.partial"
        final = store.uploads_dir / f"{upload_id}.tif"
        size = 0
        try:
            with open(partial, "wb") as fh:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > cap:
                        raise HTTPException(413, f"upload larger than the {settings.max_upload_mb:g} MB limit")
                    fh.write(chunk)
            if size == 0:
                raise HTTPException(400, "empty upload: send the GeoTIFF bytes as the request body")
            info = raster_policy.raster_info(partial)
            os.replace(partial, final)
            store.add_upload(upload_id, final, size)
        except ClientDisconnect:
            log.info("upload %s: client disconnected after %d bytes", upload_id, size)
            raise HTTPException(400, "client disconnected during the upload") from None
        finally:
            partial.unlink(missing_ok=True)
        return UploadCreated(upload_id=upload_id, size=size, **info)

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
        return submit("segment", handlers.prepare_segment(body, store, settings))

    @api.post("/jobs/grid", status_code=202, response_model=JobCreated, tags=["jobs"])
    def create_grid_job(body: GridRequest) -> JSONResponse:
        """Zero-shot scene classification on a grid of square cells: a polygon grid with class and score."""
        return submit("grid", handlers.prepare_grid(body, store, settings))

    @api.post("/jobs/search", status_code=202, response_model=JobCreated, tags=["jobs"])
    def create_search_job(body: SearchRequest) -> JSONResponse:
        """Free-text search: a similarity heat-map raster and the top-k boxes."""
        return submit("search", handlers.prepare_search(body, store, settings))

    @api.post("/prompts", tags=["engine"])
    def parse_prompts(body: PromptsRequest) -> dict:
        """How the engine reads a class list: names, synonyms and each class's stable colour (or a 400)."""
        from engine.dense import PromptSet
        from engine.geo.colours import class_colour, hex_colour

        prompts = PromptSet.parse(body.classes)
        return {"classes": [{"index": i, "name": c.label, "synonyms": list(c.names),
                             "colour": hex_colour(class_colour(c.names))} for i, c in enumerate(prompts.classes)]}

    @api.post("/regions/label", response_model=LabelResponse, tags=["regions"])
    def label_regions(body: LabelRequest) -> dict:
        """Rank the candidate classes for each box or polygon (each cropped and encoded on its own)."""
        return handlers.label(body, pool, store, settings)

    @api.get("/jobs", response_model=list[JobStatus], tags=["jobs"])
    def list_jobs() -> list[JobStatus]:
        return [status(job) for job in store.list()]

    def get_job(job_id: str):
        job = store.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id}")
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
            job_id: str,
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
            raise HTTPException(404, f"no job {job_id}")
        return status(job)

    @api.get("/jobs/{job_id}/events", tags=["jobs"], response_class=StreamingResponse,
             responses={200: {"description": "`event: status` with the job's status (`id:` its revision) now "
                                             "and after each change; the stream ends once the job is final",
                              "content": {"text/event-stream": {"schema": {"type": "string"}}}}})
    async def job_events(job_id: str) -> StreamingResponse:
        """Server-sent events of the job's status, from now until it is done, failed or cancelled."""
        if await read_job(job_id) is None:
            raise HTTPException(404, f"no job {job_id}")
        events = status_events(watch, read_job, job_id, lambda job: status(job).model_dump())
        return StreamingResponse(events, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Job-Id": job_id})

    @api.post("/jobs/{job_id}/cancel", response_model=JobStatus, tags=["jobs"])
    def cancel_job(job_id: str) -> JobStatus:
        job = get_job(job_id)
        if job.state in ("queued", "running"):
            runner.cancel(job_id)
        return status(get_job(job_id))

    @api.delete("/jobs/{job_id}", status_code=204, tags=["jobs"])
    def delete_job(job_id: str) -> None:
        job = get_job(job_id)
        if job.state in ("queued", "running"):
            runner.cancel(job_id)
            deadline = time.monotonic() + 30
            while store.get(job_id).state in ("queued", "running") and time.monotonic() < deadline:
                time.sleep(0.05)
        store.delete(job_id)

    @api.get("/jobs/{job_id}/files/{name}", tags=["jobs"],
             responses={200: {"content": {"application/octet-stream": {}}}})
    def job_file(job_id: str, name: str) -> FileResponse:
        job = get_job(job_id)
        if job.state != "done":
            raise HTTPException(409, f"job {job_id} is {job.state}; files are served once it is done")
        if name not in job.files:
            raise HTTPException(404, f"job {job_id} has no file {name}")
        return FileResponse(store.job_dir(job_id) / "out" / name, filename=name)

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
