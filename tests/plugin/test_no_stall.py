"""QGIS never freezes on the engine: with an engine whose every answer is delayed (a slow network or
a busy GPU server) a QTimer heartbeat on the UI thread never stops for more than 200 ms while the dock
checks the engine, updates the legend, segments (rendering and uploading a copy) and labels a region;
a web layer at world scale is refused before anything is rendered."""

from __future__ import annotations

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

import pytest

DELAY_S = 1.0
MAX_STALL_S = 0.2


class DelayingProxy:
    """Forwards every request to the real engine after `delay` seconds."""

    def __init__(self, target: str, delay: float):
        host, port = urlparse(target).hostname, urlparse(target).port

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self):
                time.sleep(delay)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                upstream = http.client.HTTPConnection(host, port, timeout=120)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                upstream.request(self.command, self.path, body=body, headers=headers)
                answer = upstream.getresponse()
                data = answer.read()
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                upstream.close()

            do_GET = do_POST = do_DELETE = _forward

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Heartbeat:
    """A 20 ms QTimer on the UI thread; `worst()` is the longest gap between two beats."""

    def __init__(self):
        from qgis.PyQt.QtCore import QTimer

        self.beats: list[float] = []
        self.timer = QTimer()
        self.timer.setInterval(20)
        self.timer.timeout.connect(lambda: self.beats.append(time.monotonic()))
        self.timer.start()

    def worst(self) -> float:
        return max(b - a for a, b in zip(self.beats, self.beats[1:]))


@pytest.fixture
def slow_dock(make_dock, engine):
    """The shared dock (conftest), its engine behind a proxy that delays every answer."""
    proxy = DelayingProxy(engine.url, DELAY_S)
    yield make_dock(proxy.url)
    proxy.close()


def test_no_ui_stall_over_200_ms_with_an_engine_that_answers_slowly(slow_dock, qtbot):
    from qgis.core import QgsRectangle

    from qgis_farslip.labelling import LabelMapTool

    dock = slow_dock
    beat = Heartbeat()
    started = time.monotonic()
    dock.check_engine()
    qtbot.waitUntil(lambda: dock.online, timeout=30_000)
    assert time.monotonic() - started >= DELAY_S  # the answer really was slow
    dock.prompt_edit.setPlainText("water\ngrass")
    qtbot.waitUntil(lambda: dock.legend.count() == 2, timeout=30_000)
    dock.upload_check.setChecked(True)  # QGIS renders and uploads a copy: that work is off the UI thread too
    assert dock.run() is not None
    qtbot.waitUntil(lambda: dock.run_button.isEnabled(), timeout=180_000)
    assert dock.last_error is None, dock.last_error
    layer = dock.layer_combo.currentLayer()
    e = layer.extent()
    tool = LabelMapTool(dock.canvas, dock.labeller, dock.notify)
    tool.label(QgsRectangle(e.xMinimum() + 5, e.yMinimum() + 5, e.xMinimum() + 40, e.yMinimum() + 40))
    qtbot.waitUntil(lambda: tool.dialog is not None, timeout=60_000)
    tool.dialog.accept()
    beat.timer.stop()
    assert len(beat.beats) > 100
    print(f"worst UI-thread gap: {beat.worst() * 1000:.0f} ms over {len(beat.beats)} beats")
    assert beat.worst() < MAX_STALL_S, f"the UI thread stalled for {beat.worst() * 1000:.0f} ms"


def test_a_web_layer_at_world_scale_is_refused_before_rendering(qgis_app, qtbot, tmp_path):
    from qgis.core import QgsProject, QgsRasterLayer
    from qgis.gui import QgsMapCanvas

    from qgis_farslip.dock import FarSLIPDock

    xyz = QgsRasterLayer("type=xyz&url=http://127.0.0.1:9/%7Bz%7D/%7Bx%7D/%7By%7D.png&zmax=19&zmin=0", "tiles", "wms")
    assert xyz.isValid()
    QgsProject.instance().addMapLayer(xyz)
    messages = []
    dock = FarSLIPDock(QgsMapCanvas(), lambda level, text: messages.append((level, text)))
    qtbot.addWidget(dock)
    dock.layer_combo.setLayer(xyz)
    dock.scope_combo.setCurrentText("Whole layer")
    started = time.monotonic()
    assert dock.run() is None
    assert time.monotonic() - started < 1.0
    level, text = messages[-1]
    assert level == "critical" and "zoom in and choose Area → Visible map extent" in text
    assert "coarser Resolution" in text and dock.run_button.isEnabled()
