"""Job and upload ids in paths: only ids the engine makes are looked up, so `..`, `.` and other junk are
a 404 that touches nothing; result files are served from a handle opened before the answer."""

from __future__ import annotations

import shutil
import threading

import pytest
import rasterio

from tests.engine.api_helpers import AUTH, wait_for
from tests.engine.rasters import scene, write_raster

JUNK = ["%2e%2e", "%2E%2E", "%2e", "%2E", "..%2f..", "%2e%2e%2f%2e%2e", "0123", "A" * 32, "a" * 33, "g" * 32,
        "%00", "a" * 5000]


@pytest.fixture
def done_job(client, root):
    src = write_raster(root / "ortho.tif", scene(96, 96)[0])
    created = client.post("/v1/jobs/segment", headers=AUTH, json={"input": {"path": str(src)}, "classes": "a; b"})
    status = wait_for(client, created.json()["id"])
    assert status["state"] == "done", status
    return status


def _everything(data):
    return sorted(str(p.relative_to(data)) for p in data.rglob("*"))


@pytest.mark.parametrize("method, template", [
    ("delete", "/v1/jobs/{}"), ("get", "/v1/jobs/{}"), ("get", "/v1/jobs/{}?wait=1"), ("get", "/v1/jobs/{}/events"),
    ("post", "/v1/jobs/{}/cancel"), ("get", "/v1/jobs/{}/files/result_classes.tif"), ("delete", "/v1/uploads/{}"),
])
def test_a_malformed_id_is_a_404_that_touches_nothing(client, root, done_job, method, template):
    data = root / "engine-data"
    up = client.post("/v1/uploads", headers=AUTH, content=(root / "ortho.tif").read_bytes())
    assert up.status_code == 201
    before = _everything(data)
    assert "engine.sqlite" in before and any(p.startswith("jobs/") for p in before)
    for junk in JUNK:
        got = getattr(client, method)(template.format(junk), headers=AUTH)
        assert got.status_code == 404, (junk, got.status_code, got.text)
        assert len(got.json()["detail"]) < 120, got.json()["detail"]  # the id is cut, not echoed whole
    assert _everything(data) == before  # the data folder, the other job's files and the upload are all there
    assert client.get("/v1/health").status_code == 200
    files = client.get(f"/v1/jobs/{done_job['id']}/files/result_classes.tif", headers=AUTH)
    assert files.status_code == 200
    assert client.get("/v1/jobs", headers=AUTH).json()[0]["id"] == done_job["id"]


def test_an_unknown_file_name_is_a_404_without_the_whole_name(client, done_job):
    got = client.get(f"/v1/jobs/{done_job['id']}/files/{'x' * 5000}", headers=AUTH)
    assert got.status_code == 404 and len(got.json()["detail"]) < 200, got.text


def test_a_result_file_removed_behind_the_engines_back_is_a_410_with_a_sentence(client, root, done_job):
    shutil.rmtree(root / "engine-data" / "jobs" / done_job["id"])
    got = client.get(f"/v1/jobs/{done_job['id']}/files/result_classes.tif", headers=AUTH)
    assert got.status_code == 410, got.text
    assert got.json()["detail"].startswith("the file result_classes.tif of job ") and "gone" in got.json()["detail"]
    assert client.get("/v1/health").status_code == 200


def test_downloads_racing_a_delete_complete_or_fail_cleanly(client, root):
    src = write_raster(root / "ortho.tif", scene(96, 96)[0])
    for _ in range(4):
        created = client.post("/v1/jobs/segment", headers=AUTH, json={"input": {"path": str(src)}, "classes": "a; b"})
        job_id = wait_for(client, created.json()["id"])["id"]
        whole = client.get(f"/v1/jobs/{job_id}/files/result_classes.tif", headers=AUTH).content
        answers: list[tuple[int, bytes]] = []

        def download():
            got = client.get(f"/v1/jobs/{job_id}/files/result_classes.tif", headers=AUTH)
            answers.append((got.status_code, got.content))

        threads = [threading.Thread(target=download) for _ in range(6)]
        for t in threads:
            t.start()
        assert client.delete(f"/v1/jobs/{job_id}", headers=AUTH).status_code == 204
        for t in threads:
            t.join(60)
        assert len(answers) == 6
        for code, content in answers:
            assert code in (200, 404, 410), (code, content[:200])
            if code == 200:
                assert content == whole  # whole, never cut short
                with rasterio.MemoryFile(content) as mem, mem.open() as ds:
                    assert ds.count == 1
