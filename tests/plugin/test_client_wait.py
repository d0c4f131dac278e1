"""The plugin's client follows a job by long-poll (`?wait=&since=`): progress as it changes, a cancel
passed on, and an older engine that ignores `wait` still followed, with a pause between its answers."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlparse

from qgis_farslip.client import EngineClient
from tests.plugin.older_engine import reply, serving


class RecordingClient(EngineClient):
    """The real client, noting each request it makes and what came back."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[str, str, dict | None]] = []

    def _json(self, method, path, payload=None):
        answer = super()._json(method, path, payload)
        self.calls.append((method, path, answer))
        return answer


def _segment(client, folder, **extra) -> str:
    return client.submit("segment", {"input": {"path": str(folder / "large.tif")}, "classes": ["water", "grass"],
                                     "block": 256, "polygons": False, **extra})


def test_a_job_is_followed_by_long_poll_with_its_progress(engine, folder):
    client = RecordingClient(engine.url, engine.token)
    job_id = _segment(client, folder)
    reported: list[float] = []
    status = client.wait(job_id, on_progress=lambda p, _msg: reported.append(p))
    assert status["state"] == "done" and "result_classes.tif" in status["files"]
    assert reported == sorted(reported) and reported[-1] == 1.0 and any(0 < p < 1 for p in reported), reported
    polls = [(path, answer) for method, path, answer in client.calls if method == "GET"]
    assert len(polls) == len(reported)
    since = 0
    for path, answer in polls:  # every request waits for the revision after the one already seen
        assert parse_qs(urlparse(path).query) == {"wait": ["0.5"], "since": [str(since)]}, path
        since = answer["revision"]


def test_a_cancel_in_qgis_reaches_the_engine(engine, folder):
    client = RecordingClient(engine.url, engine.token)
    job_id = _segment(client, folder)
    cancelled = threading.Event()
    status = client.wait(job_id, on_progress=lambda p, _msg: p > 0 and cancelled.set(), is_cancelled=cancelled.is_set)
    assert status["state"] == "cancelled" and status["files"] == []
    assert [call[:2] for call in client.calls].count(("POST", f"/v1/jobs/{job_id}/cancel")) == 1


class _OlderEngine(BaseHTTPRequestHandler):
    """An engine from before long-poll: ignores `wait`, answers at once, sends no revision."""

    answers = ["queued", "running", "running", "done"]
    seen: list[float] = []

    def do_GET(self):  # noqa: N802
        self.seen.append(time.monotonic())
        state = self.answers[min(len(self.seen), len(self.answers)) - 1]
        reply(self, 200, {"id": "x", "kind": "segment", "state": state, "progress": 1.0 if state == "done" else 0.5,
                          "message": state, "files": [], "summary": None})

    def log_message(self, *args):
        pass


def test_an_engine_without_long_poll_is_polled_with_a_pause():
    with serving(_OlderEngine) as url:
        client = EngineClient(url, "token")
        reported: list[str] = []
        status = client.wait("x", on_progress=lambda _p, msg: reported.append(msg), poll_s=0.2)
    assert status["state"] == "done" and reported == _OlderEngine.answers
    gaps = [b - a for a, b in zip(_OlderEngine.seen, _OlderEngine.seen[1:])]
    assert all(gap >= 0.19 for gap in gaps), gaps  # it slept between answers rather than asking again at once
