"""The job queue and what jobs use: a cancelled or deleted queued job frees its place at once; a job or
an upload a queued job uses cannot be deleted (409 naming that job) nor expire under it; a finished job
is kept for its time to live from when it finished. The compute worker is held by a job waiting on a
paused model download (tests/engine/held_job.py), so the jobs behind it stay queued."""

from __future__ import annotations

import shutil
import time

import pytest
from fastapi.testclient import TestClient

from tests.engine.api_helpers import AUTH, make_app, wait_for
from tests.engine.held_job import held_worker
from tests.engine.rasters import scene, write_raster


@pytest.fixture
def src(root):
    return write_raster(root / "ortho.tif", scene(96, 96)[0])


INSIDE = "POLYGON((500001 5199990, 500010 5199990, 500010 5199999, 500001 5199999, 500001 5199990))"  # (of src)


def _segment(client, **input_):
    return client.post("/v1/jobs/segment", headers=AUTH, json={"input": input_, "classes": "a; b"})


def _queue_length(client) -> int:
    return client.get("/v1/health").json()["queue_length"]


def test_cancelled_and_deleted_queued_jobs_free_their_places_at_once(root, src, monkeypatch, tmp_path):
    with TestClient(make_app(root, max_queue=3)) as c, held_worker(c, root, monkeypatch, tmp_path):
        queued = [_segment(c, path=str(src)) for _ in range(3)]
        assert [q.status_code for q in queued] == [202] * 3
        assert _queue_length(c) == 3
        full = _segment(c, path=str(src))
        assert full.status_code == 429 and "queue is full" in full.json()["detail"]
        ids = [q.json()["id"] for q in queued]
        assert c.post(f"/v1/jobs/{ids[0]}/cancel", headers=AUTH).json()["state"] == "cancelled"
        assert c.delete(f"/v1/jobs/{ids[1]}", headers=AUTH).status_code == 204
        assert c.post(f"/v1/jobs/{ids[2]}/cancel", headers=AUTH).status_code == 200
        assert _queue_length(c) == 0  # nothing waits any more
        again = [_segment(c, path=str(src)) for _ in range(3)]
        assert [a.status_code for a in again] == [202] * 3, [a.text for a in again]
        assert _queue_length(c) == 3
        assert _segment(c, path=str(src)).status_code == 429
        for a in again:
            c.post(f"/v1/jobs/{a.json()['id']}/cancel", headers=AUTH)
        assert _queue_length(c) == 0


def test_a_job_a_queued_accuracy_job_uses_cannot_be_deleted(client, root, src, monkeypatch, tmp_path):
    segmentation = wait_for(client, _segment(client, path=str(src)).json()["id"])["id"]
    reference = [{"wkt": INSIDE, "label": "a"}]
    with held_worker(client, root, monkeypatch, tmp_path):
        accuracy = client.post("/v1/jobs/accuracy", headers=AUTH, json={"job": segmentation, "reference": reference})
        assert accuracy.status_code == 202, accuracy.text
        refused = client.delete(f"/v1/jobs/{segmentation}", headers=AUTH)
        assert refused.status_code == 409, refused.text
        assert accuracy.json()["id"] in refused.json()["detail"] and "queued accuracy job" in refused.json()["detail"]
        assert client.get(f"/v1/jobs/{segmentation}/files/result_classes.tif", headers=AUTH).status_code == 200
        assert client.post(f"/v1/jobs/{accuracy.json()['id']}/cancel", headers=AUTH).status_code == 200
        assert client.delete(f"/v1/jobs/{segmentation}", headers=AUTH).status_code == 204  # no longer used
        assert not (root / "engine-data" / "jobs" / segmentation).exists()


def test_an_upload_a_queued_job_reads_cannot_be_deleted(client, root, src, monkeypatch, tmp_path):
    upload = client.post("/v1/uploads", headers=AUTH, content=src.read_bytes()).json()["upload_id"]
    with held_worker(client, root, monkeypatch, tmp_path):
        job_id = _segment(client, upload_id=upload).json()["id"]
        refused = client.delete(f"/v1/uploads/{upload}", headers=AUTH)
        assert refused.status_code == 409 and job_id in refused.json()["detail"], refused.text
        assert len(list((root / "engine-data" / "uploads").iterdir())) == 1
    assert wait_for(client, job_id)["state"] == "done"  # the upload was there when its turn came
    assert client.delete(f"/v1/uploads/{upload}", headers=AUTH).status_code == 204


def test_a_job_whose_input_vanished_fails_in_one_line_without_server_paths(client, root, src, monkeypatch, tmp_path):
    segmentation = wait_for(client, _segment(client, path=str(src)).json()["id"])["id"]
    reference = [{"wkt": INSIDE, "label": "a"}]
    with held_worker(client, root, monkeypatch, tmp_path):
        accuracy = client.post("/v1/jobs/accuracy", headers=AUTH,
                               json={"job": segmentation, "reference": reference}).json()["id"]
        shutil.rmtree(root / "engine-data" / "jobs" / segmentation)  # behind the engine's back
    status = wait_for(client, accuracy)
    assert status["state"] == "failed"
    assert status["message"] == f"job {segmentation}, which this job uses, was deleted before it could start"
    assert client.get("/v1/health").status_code == 200


def test_a_finished_job_and_the_upload_a_queued_job_reads_outlive_their_time_to_live(root, src, monkeypatch,
                                                                                   tmp_path):
    ttl = 1.0
    with TestClient(make_app(root, job_ttl_s=ttl)) as c:
        upload = c.post("/v1/uploads", headers=AUTH, content=src.read_bytes()).json()["upload_id"]
        with held_worker(c, root, monkeypatch, tmp_path):
            reads_upload = _segment(c, upload_id=upload).json()["id"]
            waits = _segment(c, path=str(src)).json()["id"]
            time.sleep(ttl + 0.3)  # both have waited longer than their time to live
            c.app.state.store.expire()  # what the expiry thread does every minute
            assert c.get(f"/v1/jobs/{waits}", headers=AUTH).json()["state"] == "queued"
            cancelled = c.post(f"/v1/jobs/{waits}/cancel", headers=AUTH).json()
            assert cancelled["expires"] == pytest.approx(cancelled["updated"] + ttl)
            c.app.state.store.expire()
            assert c.get(f"/v1/jobs/{waits}", headers=AUTH).status_code == 200  # kept: it just finished
        status = wait_for(c, reads_upload)
        assert status["state"] == "done", status  # its upload did not expire while it waited
        assert status["expires"] == pytest.approx(status["updated"] + ttl)
        time.sleep(ttl + 0.1)
        c.app.state.store.expire()
        assert c.get(f"/v1/jobs/{reads_upload}", headers=AUTH).status_code == 404
        assert not list((root / "engine-data" / "uploads").iterdir())
