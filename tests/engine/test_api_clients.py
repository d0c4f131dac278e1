"""Clients that misbehave cannot hold the service: an upload that stops sending is dropped and its quota
freed (it held it for ever), a quota taken by uploads still arriving says so, and a flood of region-labelling
requests leaves the server's threads to everyone else (a few run, a few wait, the rest get a 429)."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import uvicorn
from fastapi.testclient import TestClient

from engine.server import app as app_module
from engine.server import handlers
from tests.engine.api_helpers import AUTH, TOKEN, make_app
from tests.engine.rasters import scene, write_raster


@pytest.fixture
def src(root):
    return write_raster(root / "tile.tif", scene(64, 64)[0])


@pytest.fixture
def server(root, monkeypatch):
    """A real uvicorn server on loopback (a client may stop sending half-way only over a socket)."""
    monkeypatch.setattr(app_module, "UPLOAD_IDLE_S", 0.5)
    app = make_app(root, max_uploads_mb=1.0, allowed_hosts=["127.0.0.1"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    running = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not running.started:  # a server that could not start (its port taken meanwhile) fails the test
        assert thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.02)
    yield port
    running.should_exit = True
    thread.join(10)


def _start_upload(port: int, declared: int, sent: bytes) -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", port))
    conn.sendall(f"POST /v1/uploads HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                 f"Content-Length: {declared}\r\n\r\n".encode() + sent)
    return conn


def _post(port: int, path: str, body: bytes):
    import httpx

    return httpx.post(f"http://127.0.0.1:{port}{path}", content=body, headers=AUTH, timeout=30)


def test_an_upload_that_stops_sending_is_dropped_and_frees_the_quota(server, src):
    data = src.read_bytes()
    stalled = _start_upload(server, 1_040_000, data[:1000])  # nearly all of the 1 MB quota, then silence
    time.sleep(0.1)
    busy = _post(server, "/v1/uploads", data)
    assert busy.status_code == 413 and "still arriving" in busy.json()["detail"], busy.text
    stalled.settimeout(10)
    answer = stalled.recv(4096).decode()
    stalled.close()
    assert answer.startswith("HTTP/1.1 408") and "sent nothing for 0.5 s (after 1000 bytes)" in answer, answer
    assert _post(server, "/v1/uploads", data).status_code == 201  # the room is back


def test_a_flood_of_labelling_requests_is_queued_then_refused_and_others_are_served(root, src, monkeypatch):
    monkeypatch.setattr(app_module, "LABELS_AT_ONCE", 1)
    monkeypatch.setattr(app_module, "LABELS_WAITING", 1)
    entered, release = threading.Event(), threading.Event()
    real_label = handlers.label

    def held_label(*args):  # the first request stays in until released; the labelling itself runs as ever
        entered.set()
        release.wait(60)
        return real_label(*args)

    monkeypatch.setattr(handlers, "label", held_label)
    body = {"input": {"path": str(src)}, "classes": "water; grass", "regions": [{"bbox": [0, 0, 10, 10]}],
            "crs": "pixel"}
    answers: list[int] = []
    with TestClient(make_app(root)) as c:
        def send():
            answers.append(c.post("/v1/regions/label", headers=AUTH, json=body).status_code)

        first = threading.Thread(target=send)
        first.start()
        assert entered.wait(60)
        more = [threading.Thread(target=send) for _ in range(2)]  # one waits its turn, one is refused
        for t in more:
            t.start()
        deadline = time.monotonic() + 30
        while not answers and time.monotonic() < deadline:
            time.sleep(0.02)
        assert answers == [429]
        assert c.get("/v1/jobs", headers=AUTH).status_code == 200  # served while labelling is busy
        release.set()
        for t in [first, *more]:
            t.join(120)
    assert sorted(answers) == [200, 200, 429]


def test_a_message_repeated_many_times_a_second_is_logged_once_a_minute(caplog):
    """Out of file descriptors, asyncio logs every refused connection with a traceback, many times a
    second (221 MB of log in 43 s): `farslip serve` lets each such message through once a minute."""
    import logging

    from engine.server.serving import OncePerMinute

    logger = logging.getLogger("test-flood")
    flood = OncePerMinute(period_s=0.2)
    logger.addFilter(flood)
    with caplog.at_level(logging.ERROR, logger="test-flood"):
        for _ in range(10_000):
            logger.error("socket.accept() out of system resource")
        logger.error("another message")
        time.sleep(0.25)
        logger.error("socket.accept() out of system resource")
    assert [r.getMessage() for r in caplog.records] == [
        "socket.accept() out of system resource", "another message",
        "socket.accept() out of system resource (and 9999 times more in the last minute)"]


def test_the_engine_may_hold_many_connections():
    import resource

    from engine.server.serving import raise_open_files_limit

    limit = raise_open_files_limit()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert limit == soft and (soft == hard or soft >= 1 << 20 or soft == resource.RLIM_INFINITY)


@pytest.mark.parametrize("body, headers", [(b'{"classes": "\xff\xfe"}', {}),
                                           (b"[" * 5000 + b"]" * 5000, {}),
                                           (b"\x1f\x8b\x08\x00compressed", {"Content-Encoding": "gzip"})],
                         ids=["not UTF-8", "nested 5000 deep", "gzip"])
def test_a_body_that_is_not_readable_json_is_named_so(client, body, headers):
    got = client.post("/v1/prompts", headers={**AUTH, "Content-Type": "application/json", **headers}, content=body)
    assert got.status_code == 400 and "send plain UTF-8 JSON" in got.json()["detail"], got.text
