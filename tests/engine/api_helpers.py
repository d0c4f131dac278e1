"""Helpers for API tests: a configured app, a tiny checkpoint, waiting for jobs."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from engine.server.app import ServerSettings, create_app
from tests.engine.conftest import TINY, make_clip

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def write_checkpoint(folder: Path) -> Path:
    path = folder / "tiny.pt"
    if not path.exists():
        torch.save({"epoch": 1, "name": "tiny", "state_dict": make_clip().state_dict()}, path)
    return path


def make_app(root: Path, **overrides):
    values = dict(token=TOKEN, data_dir=root / "engine-data", allow_roots=[root],
                  default_model=str(write_checkpoint(root)), default_arch=TINY, device="cpu")
    values.update(overrides)
    settings = ServerSettings(**values)
    return create_app(settings)


def wait_for(client, job_id: str, states=("done", "failed", "cancelled"), timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(f"/v1/jobs/{job_id}", headers=AUTH).json()
        if status["state"] in states:
            return status
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not reach {states}: {status}")
