"""Helpers for API tests: a configured app, a tiny checkpoint, waiting for jobs (by long-poll)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

import torch

from engine.server.app import LOOPBACK_HOSTS, ServerSettings, create_app
from tests.engine.conftest import TINY, make_clip

FINAL = ("done", "failed", "cancelled")
TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def write_checkpoint(folder: Path) -> Path:
    path = folder / "tiny.pt"
    if not path.exists():
        torch.save({"epoch": 1, "name": "tiny", "state_dict": make_clip().state_dict()}, path)
    return path


def make_app(root: Path, **overrides):
    values = dict(token=TOKEN, data_dir=root / "engine-data", allow_roots=[root],
                  default_model=str(write_checkpoint(root)), default_arch=TINY, device="cpu",
                  allowed_hosts=[*LOOPBACK_HOSTS, "testserver"])  # TestClient's Host
    values.update(overrides)
    settings = ServerSettings(**values)
    return create_app(settings)


def wait_for(client, job_id: str, states=FINAL, timeout: float = 120.0, headers=AUTH) -> dict:
    """Follow a job with the long-poll until it reaches one of `states`: no sleeping, one request per change.
    Final `states` take one request in all (the engine answers when the job ends); others start from
    the job's status now and then wait for each next revision."""
    deadline = time.monotonic() + timeout
    final_only = set(states) <= set(FINAL)
    status: dict | None = None
    while (remaining := deadline - time.monotonic()) > 0:
        params = {}
        if final_only or status is not None:
            params["wait"] = f"{max(min(remaining, 60), 0.001):.3f}"
        if not final_only and status is not None:
            params["since"] = status["revision"]
        status = client.get(f"/v1/jobs/{job_id}", params=params, headers=headers).json()
        if status["state"] in states:
            return status
    raise AssertionError(f"job {job_id} did not reach {states}: {status}")


@contextmanager
def file_size_limit(limit: int):
    """Every file this process writes stops growing at `limit` bytes (EFBIG): a full disk, for real
    writes, without filling one. (Python ignores SIGXFSZ, so the write fails instead of killing it.)"""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
