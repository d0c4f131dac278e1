"""Downloading a model from the Engine tab, as a user does it, through a real engine (`POST
/v1/models/{name}/download`) whose Hugging Face Hub is a local fake (`tests/fake_hub.py`): progress in the
dock, the list saying "downloaded" afterwards, a cancel that is reported as cancelled (never as a failed
task) and keeps nothing, an engine that cannot reach the Hub said in GUI words."""

from __future__ import annotations

import os
import re
import shlex

import pytest

from tests.fake_hub import CHUNK, FakeHub
from tests.plugin import task_status
from tests.plugin.engine_process import ROOT, EngineProcess, engine_argv, free_port

REPO = "ZhenShiL/FarSLIP"  # where the releases live (README, Models)
FILES = {"farslip2-vit-b-32": "FarSLIP2_ViT-B-32.pt", "farslip1-vit-b-32": "FarSLIP1_ViT-B-32.pt"}


@pytest.fixture(scope="module")
def hub():
    """The releases' files, 256 KB of random bytes each (64 chunks)."""
    server = FakeHub({f"{REPO}/{file}": os.urandom(64 * CHUNK) for file in FILES.values()})
    yield server
    server.close()


@pytest.fixture(scope="module")
def hub_engine(folder, hub, qgis_app):
    eng = EngineProcess(folder, hub=(hub.url, folder / "hf-cache")).start()
    yield eng
    eng.stop()


def _panel(qtbot, url: str, token: str):
    from qgis_farslip.engine_panel import EnginePanel

    messages = []
    panel = EnginePanel(lambda level, text: messages.append((level, text)))
    panel.messages = messages
    qtbot.addWidget(panel)
    panel.url_edit.setText(url)
    panel.token_edit.setText(token)
    panel.check()
    qtbot.waitUntil(lambda: panel.models_list.count() >= 4, timeout=30_000)
    return panel


@pytest.fixture
def panel(qtbot, hub_engine):
    return _panel(qtbot, hub_engine.url, hub_engine.token)


def _row(panel, name: str) -> int:
    return next(i for i in range(panel.models_list.count()) if panel.models_list.item(i).text().startswith(name))


def _shown(panel, name: str) -> str:
    return panel.models_list.item(_row(panel, name)).text()


class Watch:
    """What the progress bar shows, read every 10 ms on the UI thread (as a user would see it)."""

    def __init__(self, bar):
        from qgis.PyQt.QtCore import QTimer

        self.texts: list[str] = []
        self.timer = QTimer()
        self.timer.timeout.connect(lambda: self.texts.append(bar.text()))
        self.timer.start(10)


def test_the_engine_downloads_the_chosen_model_with_progress_and_the_list_follows(panel, hub, qtbot, folder):
    hub.delay = 0.02  # about 1.5 s in all: several progress steps
    name = "farslip2-vit-b-32"
    assert _shown(panel, name) == f"{name} — not downloaded"
    panel.models_list.setCurrentRow(_row(panel, name))
    watch = Watch(panel.download_progress)
    panel.download_button.click()
    assert not panel.download_button.isEnabled() and panel.download_cancel_button.isEnabled()
    qtbot.waitUntil(lambda: _shown(panel, name) == f"{name} — downloaded", timeout=60_000)
    watch.timer.stop()
    steps = {t for t in watch.texts if re.fullmatch(rf"{name}: \d+% — \d+\.\d\d/0\.25 MB", t)}
    assert len(steps) >= 2, watch.texts  # the bytes, as they come
    assert panel.messages[-1] == ("info", f"model {name} downloaded")
    assert panel.download_progress.text() == f"{name}: downloaded" and panel.download_progress.value() == 100
    assert panel.download_button.isEnabled() and not panel.download_cancel_button.isEnabled()
    assert list((folder / "hf-cache").rglob(FILES[name]))  # in the engine's model cache
    panel.download_button.click()  # again: the engine has it, nothing is fetched
    qtbot.waitUntil(lambda: panel.download_button.isEnabled(), timeout=30_000)
    assert panel.messages[-1] == ("info", f"model {name} downloaded") and hub.gets == 1


def test_cancelling_a_download_says_cancelled_keeps_nothing_and_is_no_failed_task(panel, hub, qtbot, folder):
    name = "farslip1-vit-b-32"
    hub.delay, hub.pause_at = 0.0, 24 * CHUNK
    hub.paused.clear()
    hub.go_on.clear()
    panel.models_list.setCurrentRow(_row(panel, name))
    panel.download_button.click()
    statuses = task_status.record(panel.download_task)
    qtbot.waitUntil(hub.paused.is_set, timeout=30_000)
    qtbot.waitUntil(lambda: panel.download_progress.text().endswith("/0.25 MB"), timeout=30_000)
    panel.download_cancel_button.click()
    hub.delay = 0.1  # the rest would take 4 s: the cancel reaches the engine well before (within 0.5 s)
    hub.go_on.set()  # the next bytes reach the engine, which stops there
    qtbot.waitUntil(lambda: panel.download_button.isEnabled(), timeout=30_000)
    hub.pause_at = None
    assert panel.messages[-1] == ("info", f"download of {name} cancelled")
    assert panel.download_progress.text() == f"{name}: cancelled"
    assert task_status.not_reported_as_failed(statuses), statuses
    qtbot.waitUntil(lambda: not panel.checking, timeout=30_000)
    assert _shown(panel, name) == f"{name} — not downloaded"
    assert not [p for p in (folder / "hf-cache").rglob("*") if FILES[name] in p.name or p.suffix == ".incomplete"]


def test_an_engine_that_cannot_reach_the_hub_says_so_in_gui_words(folder, qtbot, qgis_app):
    offline = EngineProcess(folder, hub=(f"http://127.0.0.1:{free_port()}", folder / "hf-cache-2"),
                            data="data-offline").start()  # (beside the module's engine)
    try:
        panel = _panel(qtbot, offline.url, offline.token)
        panel.download_model("farslip2-vit-b-16")
        qtbot.waitUntil(lambda: panel.download_button.isEnabled(), timeout=60_000)
    finally:
        offline.stop()
    level, text = panel.messages[-1]
    assert level == "critical"
    assert text.startswith("cannot download farslip2-vit-b-16: this computer cannot reach huggingface.co"), text
    assert "press Download model again" in text and "--model" not in text and "--arch" not in text
    assert panel.download_progress.text() == "farslip2-vit-b-16: failed"


def test_download_starts_the_local_engine_when_it_is_not_running(folder, hub, qtbot, qgis_app, tmp_path,
                                                                   monkeypatch):
    from qgis_farslip.engine_panel import EnginePanel

    monkeypatch.setenv("FARSLIP_CONFIG_DIR", str(tmp_path / "cfg"))  # where the started engine puts its token
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    hub.delay, hub.pause_at = 0.0, None
    port = free_port()
    messages = []
    panel = EnginePanel(lambda level, text: messages.append((level, text)))
    qtbot.addWidget(panel)
    panel.url_edit.setText(f"http://127.0.0.1:{port}")
    panel.token_edit.setText("")
    argv = engine_argv((hub.url, tmp_path / "hf-cache")) + [
        "serve", "--port", str(port), "--data-dir", str(tmp_path / "data"), "--model", str(folder / "tiny.pt"),
        "--arch", "tiny-vit-16", "--device", "cpu"]
    panel.command_edit.setText(shlex.join(argv))
    panel.check()
    qtbot.waitUntil(lambda: panel.unreachable, timeout=20_000)  # nothing answers yet
    try:
        assert panel.download_model("farslip2-vit-b-32") is None  # the engine is started first
        assert panel.download_progress.text() == "farslip2-vit-b-32: starting the engine…"
        assert panel.engine_button.text() == "Stop engine" and panel.download_cancel_button.isEnabled()
        qtbot.waitUntil(lambda: ("info", "model farslip2-vit-b-32 downloaded") in messages, timeout=120_000)
        qtbot.waitUntil(lambda: panel.models_list.count() >= 4 and not panel.checking, timeout=30_000)
        assert "farslip2-vit-b-32 — downloaded" in [panel.models_list.item(i).text()
                                                   for i in range(panel.models_list.count())]
    finally:
        panel.local.stop(wait=True)


def test_a_full_disk_and_other_engine_failures_are_said_in_gui_words():
    from qgis_farslip.models_task import explain_download_error

    hint = ("download FarSLIP2_ViT-B-16.pt from https://huggingface.co/ZhenShiL/FarSLIP yourself and pass it: "
            "--model /path/to/FarSLIP2_ViT-B-16.pt --arch ViT-B-16")  # the engine's own wording (engine/models/hub.py)
    full = explain_download_error("farslip2-vit-b-16", f"model farslip2-vit-b-16: download failed ([Errno 28] No space "
                                  f"left on device: '/srv/hf/blobs/x.incomplete'); {hint}", size="600 MB")
    assert full == ("cannot download farslip2-vit-b-16: the disk of the engine's computer is full (it needs 600 MB): "
                    "free some space there and press Download model again")
    offline = explain_download_error("farslip2-vit-b-16", "model farslip2-vit-b-16: HF_HUB_OFFLINE is set and it is "
                                     f"not in the local cache; {hint}", "this computer")
    assert "downloads switched off (HF_HUB_OFFLINE)" in offline and "--model" not in offline
    unknown = explain_download_error("farslip9", "engine: unknown model 'farslip9' (releases: farslip1-vit-b-16)")
    assert unknown == "cannot download farslip9: the engine does not know this model name; pick one from the list"
