"""The engine as a real process on loopback: concurrent clients, a dropped upload, a killed engine, a
stop (SIGTERM) while clients wait on a job."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.engine.api_helpers import wait_for, write_checkpoint
from tests.engine.conftest import TINY
from tests.engine.rasters import scene, write_raster
from tests.fake_hub import CHUNK, FakeHub

ROOT = Path(__file__).resolve().parents[2]
# `farslip` whose huggingface_hub downloads from a fake Hub: python -c ON_FAKE_HUB URL CACHE serve ...
ON_FAKE_HUB = ("import sys; from tests.fake_hub import point_hub_at; point_hub_at(sys.argv[1], sys.argv[2]); "
               "from engine.cli import main; sys.exit(main(sys.argv[3:]))")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Engine:
    """`farslip serve` in a subprocess, restartable on the same data folder; with `hub=(url, cache)` its
    model downloads come from a fake Hub (tests/fake_hub.py)."""

    def __init__(self, folder: Path, max_queue: int = 8, hub: tuple[str, Path] | None = None):
        self.folder, self.max_queue, self.hub = folder, max_queue, hub
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.env = {**os.environ, "FARSLIP_CONFIG_DIR": str(folder / "config"), "HF_HUB_OFFLINE": "1"}

    def start(self) -> "Engine":
        ckpt = write_checkpoint(self.folder)
        farslip = [sys.executable, "-m", "engine.cli"] if self.hub is None else \
            [sys.executable, "-c", ON_FAKE_HUB, self.hub[0], str(self.hub[1])]
        self.proc = subprocess.Popen(
            [*farslip, "serve", "--port", str(self.port), "--data-dir",
             str(self.folder / "data"), "--allow-root", str(self.folder), "--model", str(ckpt), "--arch", TINY,
             "--device", "cpu", "--max-queue", str(self.max_queue)],
            cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL, stderr=open(self.folder / "engine.log", "ab"))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            raise AssertionError((self.folder / "engine.log").read_text())
        token = (self.folder / "config" / "token").read_text().strip()
        self.client = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
        return self

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def wait(self, job_id: str, states=("done", "failed", "cancelled"), timeout=180.0) -> dict:
        return wait_for(self.client, job_id, states, timeout, headers={})  # long-poll; the client has the token


@pytest.fixture
def engine(tmp_path):
    eng = Engine(tmp_path, max_queue=3).start()
    yield eng
    eng.stop()


def test_eight_concurrent_clients_all_finish_or_get_a_clean_429(engine, tmp_path):
    src = write_raster(tmp_path / "tile.tif", scene(300, 300)[0])
    body = {"input": {"path": str(src)}, "classes": "water; grass; building; road"}
    warm = engine.client.post("/v1/jobs/segment", json=body).json()["id"]
    assert engine.wait(warm)["state"] == "done"
    server = psutil.Process(engine.proc.pid)
    rss_before = server.memory_info().rss
    outcomes: list[str] = []

    def client_session():
        with httpx.Client(base_url=engine.url, headers=engine.client.headers, timeout=60) as c:
            for _ in range(3):
                got = c.post("/v1/jobs/segment", json=body)
                if got.status_code == 429:
                    assert "queue is full" in got.json()["detail"]
                    outcomes.append("429")
                    continue
                assert got.status_code == 202, got.text
                outcomes.append(engine.wait(got.json()["id"])["state"])

    threads = [threading.Thread(target=client_session) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert len(outcomes) == 24 and set(outcomes) <= {"done", "429"} and "done" in outcomes
    time.sleep(0.5)
    growth_mb = (server.memory_info().rss - rss_before) / 2**20
    assert growth_mb < 150, growth_mb  # back near where it started (measured: a few tens of MB)
    assert engine.client.get("/v1/health").json()["queue_length"] == 0


def test_a_client_dropping_mid_upload_leaves_nothing(engine):
    with socket.create_connection(("127.0.0.1", engine.port)) as s:
        s.sendall(b"POST /v1/uploads HTTP/1.1\r\nHost: x\r\n" + f"Authorization: {engine.client.headers['Authorization']}"
                  .encode() + b"\r\nContent-Type: application/octet-stream\r\nContent-Length: 5000000\r\n\r\n")
        s.sendall(b"\x00" * 200_000)
        time.sleep(0.3)
    time.sleep(1.0)
    assert engine.client.get("/v1/health").status_code == 200
    uploads = engine.folder / "data" / "uploads"
    assert list(uploads.iterdir()) == []


def test_a_killed_engine_never_serves_a_half_written_result(engine, tmp_path):
    src = write_raster(tmp_path / "big.tif", scene(1600, 1600)[0])
    for _ in range(3):  # the job takes ~1 s: a fast machine may finish it before the kill, then again
        job_id = engine.client.post("/v1/jobs/segment", json={"input": {"path": str(src)}, "classes": "a; b; c",
                                                             "block": 256}).json()["id"]
        status = engine.wait(job_id, states=("running", "done", "failed"))
        while status["progress"] == 0 and status["state"] == "running":
            status = engine.client.get(f"/v1/jobs/{job_id}", params={"wait": 30, "since": status["revision"]}).json()
        engine.proc.send_signal(signal.SIGSTOP)  # paused: the job cannot finish between this look and the kill
        finished = (engine.folder / "data" / "jobs" / job_id / "result_summary.json").exists()
        engine.kill()
        engine.start()
        if not finished:
            break
    else:
        pytest.fail("the job finished before the engine could be killed, 3 times")
    status = engine.client.get(f"/v1/jobs/{job_id}").json()
    assert status["state"] == "failed" and "interrupted" in status["message"] and status["files"] == []
    assert engine.client.get(f"/v1/jobs/{job_id}/files/result_classes.tif").status_code == 409
    assert not (engine.folder / "data" / "jobs" / job_id).exists()
    again = engine.client.post("/v1/jobs/segment", json={"input": {"path": str(src)}, "classes": "a; b",
                                                         "window": [0, 0, 300, 300]}).json()["id"]
    assert engine.wait(again)["state"] == "done"  # the restarted engine works


def test_concurrent_deletes_of_a_running_job_never_fail_and_the_engine_stays_responsive(engine, tmp_path):
    src = write_raster(tmp_path / "big.tif", scene(1600, 1600)[0])
    body = {"input": {"path": str(src)}, "classes": "a; b; c", "block": 256, "gsd": 0.5}
    job_id = engine.client.post("/v1/jobs/segment", json=body).json()["id"]
    engine.wait(job_id, states=("running",))
    answers: list[int] = []
    health_ms: list[float] = []

    def delete():
        with httpx.Client(base_url=engine.url, headers=engine.client.headers, timeout=60) as c:
            answers.append(c.delete(f"/v1/jobs/{job_id}").status_code)

    def health():
        with httpx.Client(base_url=engine.url, timeout=60) as c:
            for _ in range(5):
                started = time.perf_counter()
                assert c.get("/v1/health").status_code == 200
                health_ms.append((time.perf_counter() - started) * 1000)

    threads = [threading.Thread(target=delete) for _ in range(45)] + [threading.Thread(target=health)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(set(answers)) == [204, 404] and answers.count(204) == 1, answers  # one forgets it, no 500
    assert engine.client.get(f"/v1/jobs/{job_id}").status_code == 404
    # answered while 45 deletes arrived: it took 30 s before; the bound leaves room for a loaded 2-core CI machine
    assert max(health_ms) < 15000, health_ms
    # The engine stopped the job: the next one runs, and the deleted job's folder is gone.
    after = engine.client.post("/v1/jobs/segment", json={**body, "window": [0, 0, 200, 200], "block": 1024}).json()
    assert engine.wait(after["id"])["state"] == "done"
    assert not (engine.folder / "data" / "jobs" / job_id).exists()


def test_sigterm_stops_the_engine_within_seconds_while_clients_wait_on_a_job(tmp_path):
    """An event stream and a long-poll on a job that does not end (a model download held by the fake Hub)
    are answered when the engine is told to stop, and the engine is gone within seconds."""
    from engine import config
    from engine.models.registry import find_release

    release = find_release(config.DEFAULT_MODEL)
    hub = FakeHub({f"{release.repo_id}/{release.filename}": os.urandom(64 * CHUNK)})
    hub.pause_at = 8 * CHUNK
    engine = Engine(tmp_path, hub=(hub.url, tmp_path / "hf-cache")).start()
    try:
        created = engine.client.post(f"/v1/models/{release.name}/download")
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        assert hub.paused.wait(30)
        events: list[str] = []
        polls: list[object] = []

        def stream():
            try:
                with httpx.Client(base_url=engine.url, headers=engine.client.headers, timeout=60) as c, \
                        c.stream("GET", f"/v1/jobs/{job_id}/events") as response:
                    for line in response.iter_lines():
                        events.append(line)
                events.append("(ended)")
            except httpx.HTTPError as exc:
                events.append(f"({type(exc).__name__})")

        def long_poll():
            try:
                with httpx.Client(base_url=engine.url, headers=engine.client.headers, timeout=90) as c:
                    polls.append(c.get(f"/v1/jobs/{job_id}", params={"wait": 60}).status_code)
            except httpx.HTTPError as exc:
                polls.append(type(exc).__name__)

        clients = [threading.Thread(target=stream), threading.Thread(target=long_poll)]
        for t in clients:
            t.start()
        deadline = time.monotonic() + 30
        while not any(line.startswith("event: status") for line in events) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # the long-poll is waiting too
        assert engine.proc.poll() is None and events and polls == []
        started = time.monotonic()
        engine.proc.terminate()
        engine.proc.wait(30)
        assert time.monotonic() - started < 4, time.monotonic() - started
        for t in clients:
            t.join(10)
        assert events[-1] == "(ended)" and polls == [200], (events, polls)
    finally:
        hub.close()
        engine.stop()
