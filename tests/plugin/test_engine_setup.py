"""Engine set-up from QGIS, as a user meets it: the set-up dialog creates the engine's own environment
from a local package (no network), the dock starts that engine, sees it ready, lists and downloads
models with progress, and notices when it dies. QGIS's own Python gets nothing installed."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

from tests.plugin import task_status
from tests.plugin.engine_process import free_port
from tests.plugin.stub_engine import build_wheel


def _python() -> str:
    """A Python that can create environments (the one running QGIS here may lack ensurepip)."""
    from qgis_farslip.engine_setup import find_pythons, python_version

    for python in find_pythons():
        if not python_version(python)[1]:
            return python
    pytest.skip("no Python with venv on this machine")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheels"))


def test_the_setup_dialog_creates_the_engine_environment_from_a_local_package(qgis_app, qtbot, tmp_path, wheel):
    from qgis_farslip.setup_dialog import EngineSetupDialog

    dialog = EngineSetupDialog(configured=str(tmp_path / "nothing-here"))
    qtbot.addWidget(dialog)
    qtbot.waitUntil(lambda: "found" in dialog.found_label.text().lower(), timeout=30_000)
    dialog.python_combo.setEditText(_python())
    dialog.folder_edit.setText(str(tmp_path / "engine-env"))
    dialog.source_edit.setText(str(wheel))
    dialog.torch_combo.setCurrentIndex(dialog.torch_combo.findData("none"))
    dialog.pip_edit.setText("--no-index")
    with qtbot.waitSignal(dialog.engineReady, timeout=240_000) as ready:
        dialog.install_button.click()
    engine = ready.args[0]
    assert dialog.error is None and dialog.progress.value() == 100
    log = dialog.log_view.toPlainText()
    assert "[1/3] create the environment" in log and "[3/3] check the engine" in log and "farslip 0.0.1" in log
    assert Path(engine.command) == tmp_path / "engine-env" / "bin" / "farslip" and engine.version == "0.0.1"
    assert importlib.util.find_spec("farslip_stub_engine") is None  # nothing went into QGIS's Python
    assert not str(engine.python).startswith(sys.prefix)


def test_a_failed_install_names_the_step(qgis_app, qtbot, tmp_path):
    from qgis_farslip.setup_dialog import EngineSetupDialog

    dialog = EngineSetupDialog()
    qtbot.addWidget(dialog)
    dialog.python_combo.setEditText(_python())
    dialog.folder_edit.setText(str(tmp_path / "env"))
    dialog.source_edit.setText(str(tmp_path / "missing.whl"))
    dialog.torch_combo.setCurrentIndex(dialog.torch_combo.findData("none"))
    dialog.pip_edit.setText("--no-index")
    dialog.install_button.click()
    qtbot.waitUntil(lambda: dialog.error is not None, timeout=120_000)
    assert dialog.error.startswith("engine set-up failed while trying to install the engine from")
    assert dialog.install_button.isEnabled()


def test_cancelling_the_setup_stops_the_running_step_and_says_cancelled(qgis_app, qtbot, tmp_path):
    from qgis_farslip.setup_dialog import EngineSetupDialog

    slow = tmp_path / "python3"  # answers the version check, then takes its time creating the environment
    slow.write_text("#!/bin/sh\nif [ \"$1\" = -c ]; then echo 3.11; exit 0; fi\necho creating; sleep 60\n")
    slow.chmod(0o755)
    dialog = EngineSetupDialog()
    qtbot.addWidget(dialog)
    dialog.python_combo.setEditText(str(slow))
    dialog.folder_edit.setText(str(tmp_path / "env"))
    dialog.install_button.click()
    qtbot.waitUntil(lambda: "creating" in dialog.log_view.toPlainText(), timeout=30_000)
    statuses = task_status.record(dialog.task)
    started = __import__("time").monotonic()
    dialog.cancel_button.click()
    qtbot.waitUntil(lambda: dialog.error is not None, timeout=15_000)
    assert dialog.error == "cancelled" and __import__("time").monotonic() - started < 10
    assert task_status.not_reported_as_failed(statuses), statuses
    assert dialog.install_button.isEnabled() and not dialog.cancel_button.isEnabled()


def test_a_python_that_cannot_make_environments_is_explained(tmp_path):
    from qgis_farslip.engine_setup import python_version

    fake = tmp_path / "python3"
    fake.write_text("#!/bin/sh\necho 'ModuleNotFoundError: No module named ensurepip' >&2\nexit 1\n")
    fake.chmod(0o755)
    assert "sudo apt install python3-venv" in python_version(str(fake))[1]
    assert "cannot run" in python_version(str(tmp_path / "nope"))[1]


def test_torch_is_chosen_from_the_machine(tmp_path):
    from qgis_farslip.engine_setup import TORCH_INDEX, SetupPlan, has_cuda

    def torch_step(choice):
        steps = SetupPlan("python3", tmp_path / "env", "farslip", choice).steps()
        return next((s.argv for s in steps if "torch" in s.argv), None)

    assert TORCH_INDEX["cuda" if has_cuda() else "cpu"] in torch_step("auto")  # no GPU here: the CPU build
    assert TORCH_INDEX["cuda"] in torch_step("cuda") and torch_step("none") is None


def test_an_existing_engine_is_found_before_anything_is_installed(tmp_path, monkeypatch):
    from qgis_farslip.engine_setup import find_engine

    real = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "farslip"
    if not real.exists():
        pytest.skip("no engine env")
    monkeypatch.setenv("PATH", f"{real.parent}:{os.environ['PATH']}")
    on_path = find_engine(env_dir=tmp_path / "none")
    assert on_path is not None and on_path.command == str(real) and on_path.version
    assert find_engine(str(real.parent.parent), env_dir=tmp_path / "none").command == str(real)  # a venv folder
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert find_engine(env_dir=tmp_path / "none") is None


@pytest.fixture(scope="module")
def stub_env(tmp_path_factory, wheel, qgis_app):
    """An environment with the stand-in engine, made by the plugin's own set-up task."""
    from qgis.core import QgsApplication

    from qgis_farslip.engine_setup import SetupPlan
    from qgis_farslip.setup_task import EngineSetupTask

    task = EngineSetupTask(SetupPlan(_python(), tmp_path_factory.mktemp("env") / "e", str(wheel), "none",
                                     ["--no-index"]))
    QgsApplication.taskManager().addTask(task)
    import time

    deadline = time.monotonic() + 240
    while task.engine is None and task.error is None and time.monotonic() < deadline:
        qgis_app.processEvents()
        time.sleep(0.05)
    assert task.engine is not None, task.error
    return task.engine


@pytest.fixture
def panel(qgis_app, qtbot, stub_env):
    from qgis_farslip.engine_panel import EnginePanel

    messages = []
    widget = EnginePanel(lambda level, text: messages.append((level, text)))
    widget.messages = messages
    qtbot.addWidget(widget)
    widget.url_edit.setText(f"http://127.0.0.1:{free_port()}")
    widget.token_edit.setText("t")
    yield widget
    widget.local.stop(wait=True)


def test_the_installed_engine_starts_lists_models_and_its_death_is_noticed(panel, qtbot, stub_env):
    panel.use_engine(stub_env, start=True)
    assert panel.engine_button.text() == "Stop engine" and panel.log_view.isVisible() is not None
    qtbot.waitUntil(lambda: panel.local.state == "ready", timeout=30_000)
    qtbot.waitUntil(lambda: panel.models_list.count() == 2, timeout=10_000)
    assert [panel.models_list.item(i).text() for i in range(2)] == [
        "farslip2-vit-b-16 — not downloaded", "farslip2-vit-b-32 — not downloaded"]
    assert "farslip engine on" in panel.log_view.toPlainText()  # the engine's own output, in the dock
    panel.local.process.kill()  # the engine dies
    qtbot.waitUntil(lambda: panel.local.state == "died", timeout=10_000)
    assert panel.engine_button.text() == "Start engine" and panel.status_light.styleSheet().endswith("#c22")
    assert panel.messages[-1][0] == "critical" and "the engine stopped" in panel.messages[-1][1]


def test_an_engine_that_never_answers_times_out_with_a_message(qgis_app, qtbot):
    from qgis_farslip.local_engine import LocalEngine

    local = LocalEngine(ready_timeout_s=2, poll_ms=200)
    local.start([sys.executable, "-c", "import time; print('hanging', flush=True); time.sleep(60)"],
                f"http://127.0.0.1:{free_port()}")
    qtbot.waitUntil(lambda: local.state == "failed", timeout=10_000)
    assert "did not answer within 2 s" in local.text and "Show log" in local.text and "hanging" in local.log
    local.stop()  # QGIS does not wait for it: "stopping" until it has exited
    assert local.state == "stopping"
    qtbot.waitUntil(lambda: local.state == "stopped", timeout=15_000)
    assert local.process is None


def test_an_engine_already_serving_the_data_folder_is_explained(qgis_app, qtbot):
    """A second engine on the same data folder stops at once (it used to fail the first one's jobs); the
    panel says another engine runs and where, instead of a cut-off log line."""
    from qgis_farslip.local_engine import LocalEngine

    refusal = ("farslip: error: the data folder /home/u/.local/share/farslip is in use by another engine (pid 4242, "
               "http://127.0.0.1:8765): stop that one first, or give this one its own folder (--data-dir)")
    local = LocalEngine(ready_timeout_s=30, poll_ms=200)
    local.start([sys.executable, "-c", f"import sys; print({refusal!r}, file=sys.stderr); sys.exit(2)"],
                f"http://127.0.0.1:{free_port()}")
    qtbot.waitUntil(lambda: local.state == "died", timeout=15_000)
    assert local.text == ("another FarSLIP engine already runs on this computer (pid 4242, http://127.0.0.1:8765): "
                          "put its address in the URL and press Check to use it, or stop it and press Start")


def test_a_port_already_in_use_is_explained(panel, qtbot, stub_env):
    import socket

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    panel.url_edit.setText(f"http://127.0.0.1:{port}")
    panel.use_engine(stub_env, start=True)
    qtbot.waitUntil(lambda: panel.local.state == "died", timeout=30_000)
    busy.close()
    assert f"port {port} is already in use" in panel.local.text and "press Check" in panel.local.text
    assert panel.messages[-1] == ("critical", panel.local.text)
