"""Waiting for a job without polling: `GET /v1/jobs/{id}?wait=S[&since=R]` and the event stream.

What a client notices: one request per change (one in all until the job ends), an answer at once for
a finished job, a 4xx for bad values, other requests served while many clients wait, and a cancel
waking the waiting clients with state `cancelled`.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time

import pytest
from fastapi.testclient import TestClient

from tests.engine.api_helpers import AUTH, make_app, wait_for
from tests.engine.rasters import scene, write_raster

CLASSES = ["water", "grass", "building", "road"]


@pytest.fixture
def client(tmp_path):
    with TestClient(make_app(tmp_path)) as c:
        yield c


def _submit(client, path, **extra) -> str:
    got = client.post("/v1/jobs/segment", headers=AUTH, json={"input": {"path": str(path)}, "classes": CLASSES,
                                                              **extra})
    assert got.status_code == 202, got.text
    return got.json()["id"]


def _get(client, job_id: str, **params):
    return client.get(f"/v1/jobs/{job_id}", headers=AUTH, params=params)


def _in_thread(fn) -> tuple[threading.Thread, list]:
    answers: list = []
    thread = threading.Thread(target=lambda: answers.append(fn()), daemon=True)
    thread.start()
    return thread, answers


def test_a_waiting_get_returns_the_final_status_in_one_request(client, tmp_path, caplog):
    job_id = _submit(client, write_raster(tmp_path / "a.tif", scene(600, 600)[0]), block=256)
    with caplog.at_level(logging.INFO, logger="farslip.api"):
        status = _get(client, job_id, wait=60).json()
    assert status["state"] == "done" and status["progress"] == 1.0 and "result_classes.tif" in status["files"]
    requests = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"GET /v1/jobs/{job_id} ")]
    assert len(requests) == 1, requests


def test_since_answers_at_the_next_change_with_a_new_revision(client, tmp_path):
    job_id = _submit(client, write_raster(tmp_path / "b.tif", scene(1400, 1400)[0]), block=256)
    seen = [_get(client, job_id).json()]
    assert seen[0]["revision"] >= 0
    while seen[-1]["state"] not in ("done", "failed", "cancelled"):
        seen.append(_get(client, job_id, wait=60, since=seen[-1]["revision"]).json())
    revisions = [s["revision"] for s in seen]
    assert revisions == sorted(set(revisions)), revisions  # every answer brought a change
    assert any(0 < s["progress"] < 1 for s in seen), seen  # progress arrived while the job ran
    assert seen[-1]["state"] == "done"


def test_a_finished_job_is_answered_at_once(client, tmp_path):
    job_id = _submit(client, write_raster(tmp_path / "c.tif", scene(100, 100)[0]))
    done = wait_for(client, job_id)
    for params in ({"wait": 60}, {"wait": 60, "since": done["revision"]}):
        thread, answers = _in_thread(lambda p=params: _get(client, job_id, **p).json())
        thread.join(20)  # far less than the 60 s asked for
        assert not thread.is_alive() and answers[0]["revision"] == done["revision"], answers
    assert _get(client, "0" * 32, wait=60).status_code == 404  # an unknown job is a 404 at once
    assert client.get(f"/v1/jobs/{job_id}", params={"wait": 1}).status_code == 401


def test_since_that_differs_is_answered_at_once(client, tmp_path):
    job_id = _submit(client, write_raster(tmp_path / "d.tif", scene(100, 100)[0]))
    done = wait_for(client, job_id)
    assert _get(client, job_id, wait=60, since=done["revision"] + 1000).json()["revision"] == done["revision"]


@pytest.mark.parametrize("query", ["wait=0", "wait=-1", "wait=60.5", "wait=abc", "wait=", "wait=nan", "wait=inf",
                                   "wait=1e400", "wait=1&since=-1", "wait=1&since=x", "wait=1&since=1.5",
                                   "since=99999999999999999999999"])
def test_bad_wait_values_are_a_4xx(client, tmp_path, query):
    job_id = _submit(client, write_raster(tmp_path / "e.tif", scene(64, 64)[0]))
    got = client.get(f"/v1/jobs/{job_id}?{query}", headers=AUTH)
    assert got.status_code == 422, (query, got.status_code, got.text)
    assert got.json()["detail"].startswith("query."), got.text
    wait_for(client, job_id)


def test_many_waiting_clients_block_no_other_request_and_a_cancel_wakes_them(client, tmp_path):
    """More clients wait than the server has threads for synchronous endpoints (40): they hold none."""
    src = write_raster(tmp_path / "big.tif", scene(2000, 2000)[0])
    ahead = [_submit(client, src, block=256) for _ in range(2)]
    queued = _submit(client, src, block=256)  # behind the other two: nothing about it changes meanwhile
    waiters = [_in_thread(lambda: _get(client, queued, wait=60).json()) for _ in range(48)]
    watch = client.app.state.watch
    deadline = time.monotonic() + 30
    while watch.waiting(queued) < 48 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert watch.waiting(queued) == 48
    assert client.get("/v1/health").status_code == 200  # a synchronous endpoint: needs a free worker thread
    assert client.get("/v1/models", headers=AUTH).status_code == 200
    assert _get(client, queued).json()["state"] in ("queued", "running")
    assert all(thread.is_alive() for thread, _ in waiters)  # still waiting, all 48
    assert client.post(f"/v1/jobs/{queued}/cancel", headers=AUTH).status_code == 200
    for thread, answers in waiters:
        thread.join(30)
        assert not thread.is_alive() and answers[0]["state"] == "cancelled", answers
    for job_id in ahead:
        client.post(f"/v1/jobs/{job_id}/cancel", headers=AUTH)
        assert wait_for(client, job_id, timeout=60)["state"] in ("cancelled", "done")


def test_cancelling_a_running_job_wakes_its_waiting_client(client, tmp_path):
    job_id = _submit(client, write_raster(tmp_path / "f.tif", scene(2000, 2000)[0]), block=256)
    wait_for(client, job_id, states=("running",))
    thread, answers = _in_thread(lambda: _get(client, job_id, wait=60).json())
    deadline = time.monotonic() + 30
    while client.app.state.watch.waiting(job_id) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=AUTH).status_code == 200
    thread.join(30)
    assert not thread.is_alive() and answers[0]["state"] == "cancelled" and answers[0]["files"] == []


def test_the_event_stream_sends_each_change_until_the_job_ends(client, tmp_path):
    job_id = _submit(client, write_raster(tmp_path / "g.tif", scene(1400, 1400)[0]), block=256)
    got = client.get(f"/v1/jobs/{job_id}/events", headers=AUTH)
    assert got.status_code == 200 and got.headers["content-type"].startswith("text/event-stream")
    events = [dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
              for block in got.text.strip().split("\n\n")]
    events = [e for e in events if e]
    assert {e["event"] for e in events} == {"status"}
    statuses = [json.loads(e["data"]) for e in events]
    assert [int(e["id"]) for e in events] == [s["revision"] for s in statuses]
    assert [s["revision"] for s in statuses] == sorted({s["revision"] for s in statuses})
    assert statuses[-1]["state"] == "done" and statuses[-1]["files"]
    assert len(statuses) >= 3  # queued or running, progress on the way, done
    assert client.get("/v1/jobs/" + "0" * 32 + "/events", headers=AUTH).status_code == 404
    assert client.get(f"/v1/jobs/{job_id}/events").status_code == 401


def test_an_older_data_folder_gains_revisions(tmp_path):
    """A data folder written before revisions existed opens, and its jobs report revision 0 and up."""
    data = tmp_path / "engine-data"
    data.mkdir()
    db = sqlite3.connect(data / "engine.sqlite")
    db.executescript("""
        CREATE TABLE jobs (id TEXT PRIMARY KEY, kind TEXT NOT NULL, state TEXT NOT NULL,
            progress REAL NOT NULL DEFAULT 0, message TEXT NOT NULL DEFAULT '', created REAL NOT NULL,
            updated REAL NOT NULL, expires REAL NOT NULL, request TEXT NOT NULL, summary TEXT, files TEXT);
    """)
    now = time.time()
    db.execute("INSERT INTO jobs VALUES (?, 'segment', 'done', 1, 'done', ?, ?, ?, '{}', '{}', '[]')",
               ("a" * 32, now, now, now + 3600))
    db.execute("INSERT INTO jobs VALUES (?, 'segment', 'running', 0.5, '', ?, ?, ?, '{}', NULL, NULL)",
               ("b" * 32, now, now, now + 3600))
    db.commit()
    db.close()
    with TestClient(make_app(tmp_path)) as c:
        assert _get(c, "a" * 32, wait=5).json()["revision"] == 0
        interrupted = _get(c, "b" * 32, wait=5).json()
        assert interrupted["state"] == "failed" and interrupted["revision"] == 1
