"""Model downloads through the API (`POST /v1/models/{name}/download`), against a local fake Hub
(`tests/fake_hub.py`, shared with the plugin's download tests): huggingface_hub is pointed at a small HTTP
server in the test that streams the file in small chunks, slowly, or stops half-way until the test lets
it go on. The engine's own download code runs unchanged.
"""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

import pytest
import torch

from engine.models import hub, registry
from tests.engine.api_helpers import AUTH, wait_for
from tests.engine.conftest import TINY, make_clip
from tests.engine.rasters import scene, write_raster
from tests.fake_hub import CHUNK, FakeHub, point_hub_at


@pytest.fixture
def release(monkeypatch):
    release = registry.Release("farslip-tiny-test", registry.HF_REPO, "FarSLIP_tiny.pt", TINY, "test release")
    monkeypatch.setitem(registry.RELEASES, release.name, release)
    return release


@pytest.fixture
def weights(release) -> bytes:
    """The file the fake Hub serves: 256 KB (64 chunks)."""
    return os.urandom(64 * CHUNK)


@pytest.fixture
def fake_hub(monkeypatch, tmp_path, release, weights):
    server = FakeHub({f"{release.repo_id}/{release.filename}": weights})
    point_hub_at(server.url, tmp_path / "hf-cache", monkeypatch)
    yield server
    server.close()


def _download(client, name):
    return client.post(f"/v1/models/{name}/download", headers=AUTH)


def _cached(client, name) -> bool:
    releases = client.get("/v1/models", headers=AUTH).json()["releases"]
    return next(r["cached"] for r in releases if r["name"] == name)


def _partials(cache: Path) -> list[Path]:
    return [p for p in cache.rglob("*") if p.name.endswith(".incomplete")]


def test_a_download_job_reports_bytes_and_the_model_is_cached_after(client, fake_hub, release, weights, tmp_path):
    fake_hub.delay = 0.03  # ~2 s in all: several progress changes
    assert not _cached(client, release.name)
    created = _download(client, release.name)
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    assert _download(client, release.name).json()["id"] == job_id  # asked again while it runs: the same job

    seen, status = [], client.get(f"/v1/jobs/{job_id}", headers=AUTH).json()
    assert status["kind"] == "download"
    while status["state"] not in ("done", "failed", "cancelled"):
        status = client.get(f"/v1/jobs/{job_id}", params={"wait": 30, "since": status["revision"]},
                            headers=AUTH).json()
        seen.append((status["progress"], status["message"]))
    assert status["state"] == "done", status
    assert status["summary"] == {"model": release.name, "file": release.filename, "bytes": len(weights)}
    between = [(p, m) for p, m in seen if 0 < p < 1]
    assert len({p for p, _ in between}) >= 2, seen
    assert all(re.fullmatch(r"\d+\.\d\d/0\.25 MB", m) for _, m in between), between
    assert sorted(p for p, _ in seen) == [p for p, _ in seen]  # never backwards

    assert _cached(client, release.name)
    assert hub.cached_path(release).read_bytes() == weights
    again = _download(client, release.name)
    assert again.status_code == 200 and again.json() == {"id": None, "cached": True}
    assert not _partials(tmp_path / "hf-cache") and fake_hub.gets == 1


def test_unknown_release_is_a_404_naming_the_releases(client, release):
    response = _download(client, "farslip9-vit-x")
    assert response.status_code == 404
    assert response.json()["detail"].startswith("unknown model 'farslip9-vit-x' (releases: ")
    assert release.name in response.json()["detail"]
    assert client.post(f"/v1/models/{release.name}/download").status_code == 401  # the token is required


def test_cancel_mid_download_leaves_nothing_cached(client, fake_hub, release, weights, tmp_path):
    fake_hub.pause_at = 24 * CHUNK
    job_id = _download(client, release.name).json()["id"]
    assert fake_hub.paused.wait(30)
    assert wait_for(client, job_id, states=("running",))["state"] == "running"
    cancelled = client.post(f"/v1/jobs/{job_id}/cancel", headers=AUTH)
    assert cancelled.status_code == 200
    fake_hub.go_on.set()  # the next chunk reaches the download loop, which stops there
    status = wait_for(client, job_id)
    assert status["state"] == "cancelled", status

    cache = tmp_path / "hf-cache"
    assert hub.cached_path(release) is None and not _cached(client, release.name)
    assert not _partials(cache)
    assert not [p for p in cache.rglob("blobs/*")]  # no blob, whole or partial

    fake_hub.pause_at = None  # a later download starts afresh and completes
    retry = _download(client, release.name)
    assert retry.status_code == 202 and retry.json()["id"] != job_id
    assert wait_for(client, retry.json()["id"])["state"] == "done"
    assert hub.cached_path(release).read_bytes() == weights


def test_a_segmentation_job_runs_while_a_model_downloads(client, fake_hub, release, root):
    fake_hub.pause_at = 8 * CHUNK
    download = _download(client, release.name).json()["id"]
    assert fake_hub.paused.wait(30)
    src = write_raster(root / "ortho.tif", scene(96, 96)[0])
    created = client.post("/v1/jobs/segment", headers=AUTH, json={"input": {"path": str(src)},
                                                                  "classes": ["water", "grass"]})
    assert created.status_code == 202, created.text
    assert wait_for(client, created.json()["id"])["state"] == "done"
    assert client.get(f"/v1/jobs/{download}", headers=AUTH).json()["state"] == "running"
    assert client.get("/v1/health").json()["queue_length"] == 0
    fake_hub.go_on.set()
    assert wait_for(client, download)["state"] == "done"


def test_unreachable_hub_fails_the_job_with_the_usual_line(client, monkeypatch, release, tmp_path):
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    point_hub_at(f"http://127.0.0.1:{port}", tmp_path / "hf-cache", monkeypatch)
    status = wait_for(client, _download(client, release.name).json()["id"])
    assert status["state"] == "failed"
    assert status["message"].startswith(f"model {release.name}: the Hugging Face Hub cannot be reached and it is "
                                        f"not in the local cache; ")
    assert "\n" not in status["message"]


def test_a_job_says_it_is_loading_its_model_the_first_time(client, root):
    store = client.app.state.store
    messages: list[str] = []
    store.on_change(lambda job_id: messages.append(getattr(store.get(job_id), "message", "")))
    src = write_raster(root / "ortho.tif", scene(64, 64)[0])
    for _ in range(2):
        job = client.post("/v1/jobs/segment", headers=AUTH, json={"input": {"path": str(src)}, "classes": ["water"]})
        assert wait_for(client, job.json()["id"])["state"] == "done"
    assert messages.count("loading model tiny.pt…") == 1, messages  # the second job finds it loaded


def test_a_job_on_a_release_not_yet_cached_downloads_it_first(client, monkeypatch, tmp_path, release, root):
    buffer = tmp_path / "ckpt.pt"
    torch.save({"epoch": 1, "name": "tiny", "state_dict": make_clip().state_dict()}, buffer)
    server = FakeHub({f"{release.repo_id}/{release.filename}": buffer.read_bytes()})
    try:
        point_hub_at(server.url, tmp_path / "hf-cache", monkeypatch)
        monkeypatch.setattr("huggingface_hub.constants.DOWNLOAD_CHUNK_SIZE", 1 << 20)
        store = client.app.state.store
        messages: list[str] = []
        store.on_change(lambda job_id: messages.append(getattr(store.get(job_id), "message", "")))
        src = write_raster(root / "ortho.tif", scene(64, 64)[0])
        job = client.post("/v1/jobs/segment", headers=AUTH,
                          json={"input": {"path": str(src)}, "classes": ["water"], "model": release.name})
        assert job.status_code == 202, job.text
        assert wait_for(client, job.json()["id"])["state"] == "done"
        assert any(m.startswith(f"downloading model {release.name}: ") and m.endswith(" MB") for m in messages)
        assert f"loading model {release.name}…" in messages
        assert _cached(client, release.name)
    finally:
        server.close()


def test_partial_blobs_left_by_a_cancelled_download_are_removed_unless_in_use(monkeypatch, tmp_path, release):
    """Older huggingface_hub versions keep `<etag>.incomplete` to resume: a cancelled job removes the
    ones written since it started whose download lock is free, never another download's."""
    from filelock import FileLock
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    folder = "models--" + release.repo_id.replace("/", "--")
    blobs, locks = tmp_path / folder / "blobs", tmp_path / ".locks" / folder
    blobs.mkdir(parents=True)
    locks.mkdir(parents=True)
    started = time.time()
    ours, busy, older = (blobs / f"{c * 64}.incomplete" for c in "abc")
    for partial in (ours, busy, older):
        partial.write_bytes(b"x" * 100)
    os.utime(older, (started - 3600, started - 3600))
    with FileLock(str(locks / f"{'b' * 64}.lock")):
        hub._drop_abandoned_partials(release.repo_id, started)
    assert not ours.exists() and busy.exists() and older.exists()


def _checkpoint_bytes(tmp_path) -> bytes:
    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 1, "name": "tiny", "state_dict": make_clip().state_dict()}, path)
    return path.read_bytes()


def test_the_engine_answers_at_once_while_a_model_loads(client, monkeypatch, tmp_path, release):
    """A load that downloads its release (held half-way by the fake Hub) holds up no request: health and the
    other routes answer at once, and list the model once it is loaded."""
    server = FakeHub({f"{release.repo_id}/{release.filename}": _checkpoint_bytes(tmp_path)})
    server.pause_at = 8 * CHUNK
    failures: list[BaseException] = []

    def load():
        try:
            client.app.state.pool.get(release.name, None)  # what a job or a label request does first
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            failures.append(exc)

    try:
        point_hub_at(server.url, tmp_path / "hf-cache", monkeypatch)
        loading = threading.Thread(target=load)
        loading.start()
        assert server.paused.wait(30)
        for _ in range(3):
            started = time.perf_counter()
            health = client.get("/v1/health")
            assert health.status_code == 200 and time.perf_counter() - started < 2
            assert health.json()["models_loaded"] == []
            assert client.get("/v1/models", headers=AUTH).json()["loaded"] == []
            assert client.get("/v1/jobs", headers=AUTH).status_code == 200
        server.go_on.set()
        loading.join(120)
        assert not failures, failures
        loaded = client.get("/v1/health").json()["models_loaded"]
        assert [m["name"] for m in loaded] == [release.name]
    finally:
        server.close()


def test_labelling_with_a_release_not_downloaded_is_a_409_naming_the_download(client, fake_hub, release, root):
    src = write_raster(root / "ortho.tif", scene(64, 64)[0])
    got = client.post("/v1/regions/label", headers=AUTH, json={
        "input": {"path": str(src)}, "classes": "a; b", "regions": [{"bbox": [0, 0, 10, 10]}], "crs": "pixel",
        "model": release.name})
    assert got.status_code == 409, got.text
    assert got.json()["detail"].startswith(f"model {release.name} is not downloaded yet: download it first with "
                                           f"POST /v1/models/{release.name}/download")
    assert fake_hub.gets == 0  # nothing was fetched inside the request
