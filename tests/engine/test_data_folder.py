"""The engine's data folder across engines and accidents: a second engine on it is refused before it
touches anything (it used to mark the first one's jobs failed and delete their folders while they ran);
a damaged job database or job record, an engine killed mid-upload, a full disk when a job was to start or
end — each leaves an engine that starts, serves and finishes every job."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from engine.server import runner as runner_module
from engine.server.runner import JobRunner
from engine.server.store import FolderInUse, JobStore
from tests.engine.api_helpers import AUTH, file_size_limit, make_app, wait_for
from tests.engine.rasters import scene, write_raster

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def src(root):
    return write_raster(root / "in.tif", scene(96, 96)[0])


def _segment(client, src) -> str:
    created = client.post("/v1/jobs/segment", headers=AUTH, json={"input": {"path": str(src)}, "classes": "a; b"})
    assert created.status_code == 202, created.text
    return created.json()["id"]


def test_a_second_engine_on_the_same_data_folder_is_refused_before_it_touches_anything(root, src):
    with TestClient(make_app(root, port=8123)) as first:
        done = wait_for(first, _segment(first, src))["id"]
        with pytest.raises(FolderInUse, match=rf"the data folder {root / 'engine-data'} is in use by another "
                                              rf"engine \(pid {os.getpid()}, http://127.0.0.1:8123\): stop that one "
                                              rf"first, or give this one its own folder \(--data-dir\)"):
            make_app(root, port=8124)
        assert first.get(f"/v1/jobs/{done}", headers=AUTH).json()["state"] == "done"
        assert first.get(f"/v1/jobs/{done}/files/result_classes.tif", headers=AUTH).status_code == 200
    with TestClient(make_app(root, port=8124)) as second:  # the first one stopped: the folder is free
        assert second.get(f"/v1/jobs/{done}/files/result_classes.tif", headers=AUTH).status_code == 200


def test_the_command_line_says_so_in_one_line(tmp_path):
    data = tmp_path / "data"
    held = JobStore(data, 3600, owner="pid 1, http://127.0.0.1:1")  # (by this process, as long as it is kept)
    env = {**os.environ, "FARSLIP_CONFIG_DIR": str(tmp_path / "config"), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-m", "engine.cli", "serve", "--data-dir", str(data), "--port", "1"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stderr.strip() == (
        f"farslip: error: the data folder {data} is in use by another engine (pid 1, http://127.0.0.1:1): stop that "
        f"one first, or give this one its own folder (--data-dir)"), run.stderr
    held.release()


def test_a_damaged_job_database_is_set_aside_and_the_engine_starts(root, src, caplog):
    with TestClient(make_app(root)) as c:
        wait_for(c, _segment(c, src))
    database = root / "engine-data" / "engine.sqlite"
    with sqlite3.connect(database) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    database.write_bytes(b"this is not a database" * 300)
    with TestClient(make_app(root)) as c:
        assert c.get("/v1/jobs", headers=AUTH).json() == []  # its jobs are forgotten ...
        assert list((root / "engine-data" / "jobs").iterdir()) == []  # ... and their unrecorded folders removed
        assert wait_for(c, _segment(c, src))["state"] == "done"
    assert len(list((root / "engine-data").glob("engine.sqlite.damaged-*"))) == 1  # (kept, for whoever wants it)
    assert any("was damaged" in r.getMessage() and "set aside" in r.getMessage() for r in caplog.records)


def test_a_job_record_that_cannot_be_read_is_one_failed_job_not_a_broken_list(root, src):
    with TestClient(make_app(root)) as c:
        good, bad = (wait_for(c, _segment(c, src))["id"] for _ in range(2))
    with sqlite3.connect(root / "engine-data" / "engine.sqlite") as db:
        db.execute("UPDATE jobs SET request = '{not json', summary = '[' WHERE id = ?", (bad,))
    with TestClient(make_app(root)) as c:
        listed = c.get("/v1/jobs", headers=AUTH)
        assert listed.status_code == 200, listed.text
        states = {job["id"]: (job["state"], job["message"]) for job in listed.json()}
        assert states[good] == ("done", "done")
        assert states[bad][0] == "failed" and "record in the engine's database is damaged" in states[bad][1]
        assert c.get(f"/v1/jobs/{bad}/files/result_classes.tif", headers=AUTH).status_code == 409
        assert c.delete(f"/v1/jobs/{bad}", headers=AUTH).status_code == 204
        assert c.get(f"/v1/jobs/{good}/files/result_classes.tif", headers=AUTH).status_code == 200


def test_what_an_engine_killed_mid_write_left_is_removed_at_start(root, src):
    with TestClient(make_app(root)) as c:
        kept = wait_for(c, _segment(c, src))["id"]
        upload = c.post("/v1/uploads", headers=AUTH, content=src.read_bytes()).json()["upload_id"]
    data = root / "engine-data"
    partial = data / "uploads" / f".{'a' * 32}.partial"  # an upload cut short by SIGKILL (up to 4 GB)
    partial.write_bytes(b"\0" * 1000)
    orphan_upload = data / "uploads" / f"{'b' * 32}.tif"
    orphan_upload.write_bytes(b"\0" * 1000)
    orphan_job = data / "jobs" / ("c" * 32)
    (orphan_job / "out").mkdir(parents=True)
    with TestClient(make_app(root)):
        assert not partial.exists() and not orphan_upload.exists() and not orphan_job.exists()
        assert (data / "jobs" / kept / "out" / "result_classes.tif").exists()
        assert [p.name.split(".")[0] for p in (data / "uploads").iterdir()] == [upload]


def test_a_job_start_or_outcome_a_full_disk_refused_is_written_once_it_can_be(tmp_path, monkeypatch):
    """A queued job whose start could not be recorded was taken off the queue and stayed 'queued' for ever;
    an outcome that could not be recorded would have left its job 'running' for ever."""
    import resource

    monkeypatch.setattr(runner_module, "RETRY_S", 0.05)
    store = JobStore(tmp_path / "data", 3600)
    gates = {n: threading.Event() for n in (1, 3)}
    started, ended = threading.Event(), threading.Event()

    def work(request: dict, context) -> dict:
        started.set()
        if request["n"] in gates:
            assert gates[request["n"]].wait(60)
        ended.set()
        return {"n": request["n"]}

    def done(job_id: str) -> bool:
        deadline = time.monotonic() + 60
        while store.get(job_id).state != "done" and time.monotonic() < deadline:
            time.sleep(0.01)
        return store.get(job_id).state == "done"

    runner = JobRunner(store, {"work": work}, max_queue=4)
    try:
        # the outcome: the disk fills while the first job runs
        first, second = runner.submit("work", {"n": 1}), runner.submit("work", {"n": 2})
        assert started.wait(60)
        with file_size_limit(1):
            gates[1].set()
            assert ended.wait(60)
            time.sleep(0.3)  # several tries
            assert store.get(first).state == "running" and store.get(second).state == "queued"
        assert done(first) and done(second) and store.get(first).summary == {"n": 1}

        # the start: the disk fills the moment the third job's outcome is written, before the fourth starts
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        filled = threading.Event()

        def fill_once_third_is_done(job_id: str) -> None:
            if job_id == third and not filled.is_set() and store.get(third).state == "done":
                resource.setrlimit(resource.RLIMIT_FSIZE, (1, hard))
                filled.set()

        third, fourth = runner.submit("work", {"n": 3}), runner.submit("work", {"n": 4})
        store.on_change(fill_once_third_is_done)
        try:
            gates[3].set()
            assert filled.wait(60)
            time.sleep(0.3)  # several tries to start the fourth
            assert store.get(fourth).state == "queued" and runner.queue_length == 1  # still waiting, first in line
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        assert done(fourth) and store.get(fourth).summary == {"n": 4} and runner.queue_length == 0
    finally:
        runner.stop()
        store.release()


@pytest.mark.parametrize("flag, value, message", [
    ("--job-ttl-hours", "nan", "'nan' must be a number over 0"),
    ("--job-ttl-hours", "-1", "'-1' must be a number over 0"),
    ("--max-queue", "0", "'0' must be a number at least 1"),
    ("--max-upload-mb", "inf", "'inf' must be a number over 0"),
    ("--port", "70000", "'70000' must be a number at least 1 and at most 65535"),
])
def test_nonsense_engine_settings_are_refused_at_start(capsys, flag, value, message):
    """--job-ttl-hours nan made every submit a 500, -1 expired jobs as they ended; --max-queue 0 refused
    every job (429, '-1 waiting')."""
    from engine.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(["serve", flag, value])
    err = capsys.readouterr().err.strip().splitlines()
    assert stopped.value.code == 2 and len(err) == 1 and f"argument {flag}: {message}" in err[0], err


def test_ctrl_c_with_a_job_running_stops_the_engine_cleanly(tmp_path):
    """It aborted in C++ ('terminate called without an active exception', exit -6, a core dump) while
    the job's compute threads ran; now it stops as SIGTERM does, and the job is reported interrupted."""
    from tests.engine.test_api_service import Engine

    src = write_raster(tmp_path / "big.tif", scene(512, 512)[0])
    engine = Engine(tmp_path).start()
    try:
        job = engine.client.post("/v1/jobs/segment", json={"input": {"path": str(src)}, "classes": "a; b; c",
                                                           "gsd": 0.1}).json()["id"]
        deadline = time.monotonic() + 120
        while engine.client.get(f"/v1/jobs/{job}").json()["message"] in ("starting", "") \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert engine.client.get(f"/v1/jobs/{job}").json()["state"] == "running"
        engine.proc.send_signal(signal.SIGINT)
        engine.proc.wait(60)
    finally:
        engine.stop()
    err = (tmp_path / "engine.log").read_text()
    assert engine.proc.returncode == 130 and "terminate called" not in err and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == "farslip: engine stopped"
    with TestClient(make_app(tmp_path, data_dir=tmp_path / "data")) as c:  # the next start
        status = c.get(f"/v1/jobs/{job}", headers=AUTH).json()
        assert status["state"] == "failed" and status["message"].startswith("interrupted"), status
