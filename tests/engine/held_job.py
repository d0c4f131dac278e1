"""A running job that holds the engine's compute worker for as long as a test needs, with no CPU: a
segmentation job on a model release not yet cached, whose download from a local fake Hub
(`tests/fake_hub.py`) stops part-way until the test lets it go on. Jobs submitted meanwhile stay queued.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

from engine.models import registry
from tests.engine.api_helpers import AUTH, wait_for
from tests.engine.conftest import TINY
from tests.engine.rasters import scene, write_raster
from tests.fake_hub import CHUNK, FakeHub, point_hub_at


@contextmanager
def held_worker(client, root, monkeypatch, tmp_path):
    """The id of a job running (downloading its model) until the block ends; then it is cancelled."""
    release = registry.Release("farslip-held-test", registry.HF_REPO, "FarSLIP_held.pt", TINY, "test release")
    monkeypatch.setitem(registry.RELEASES, release.name, release)
    hub = FakeHub({f"{release.repo_id}/{release.filename}": os.urandom(16 * CHUNK)})
    hub.pause_at = 4 * CHUNK
    point_hub_at(hub.url, tmp_path / "hf-cache", monkeypatch)
    try:
        src = write_raster(root / "held.tif", scene(64, 64)[0])
        created = client.post("/v1/jobs/segment", headers=AUTH, json={
            "input": {"path": str(src)}, "classes": ["water"], "model": release.name})
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        assert hub.paused.wait(30)
        assert wait_for(client, job_id, states=("running",))["state"] == "running"
        yield job_id
        client.post(f"/v1/jobs/{job_id}/cancel", headers=AUTH)
        hub.go_on.set()  # the next chunk reaches the download loop, which stops there
        if client.get(f"/v1/jobs/{job_id}", headers=AUTH).status_code == 200:  # (unless the test deleted it)
            wait_for(client, job_id)
    finally:
        hub.close()
