"""Plugin tests run in the QGIS env (Debian's python3 + python3-qgis) with a real QgsApplication."""

from __future__ import annotations

import pytest

qgis_core = pytest.importorskip("qgis.core", reason="plugin tests run in the QGIS env (.venv-qgis)")

_APP = None


MASTER_PASSWORD = "farslip-tests"


@pytest.fixture(scope="session")
def qgis_app(tmp_path_factory):
    """One offscreen QgsApplication for the whole session (QGIS allows only one), with its own
    authentication database, unlocked with a test master password (QGIS would ask the user)."""
    global _APP
    if _APP is None:
        import os

        os.environ["QGIS_AUTH_DB_DIR_PATH"] = str(tmp_path_factory.mktemp("qgis-auth"))
        _APP = qgis_core.QgsApplication([], False)
        _APP.initQgis()
        assert qgis_core.QgsApplication.authManager().setMasterPassword(MASTER_PASSWORD, True)
    return _APP


@pytest.fixture(autouse=True)
def no_task_outlives_its_test():
    """After each test, QGIS's task manager is left empty: a task a failed test left running is cancelled
    and waited for (at most 60 s), so that it neither holds one of the manager's threads nor ends inside
    the next test."""
    yield
    if _APP is None:
        return
    import time

    manager = qgis_core.QgsApplication.taskManager()
    if not manager.countActiveTasks():
        return
    manager.cancelAll()
    deadline = time.monotonic() + 60
    while manager.countActiveTasks() and time.monotonic() < deadline:
        qgis_core.QgsApplication.processEvents()
        time.sleep(0.05)


@pytest.fixture(scope="session")
def qapp(qgis_app):  # pytest-qt uses this application
    return qgis_app


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny checkpoint and two synthetic rasters (small, large), written by the engine env."""
    from tests.plugin.engine_process import make_fixtures

    path = tmp_path_factory.mktemp("plugin")
    make_fixtures(path)
    return path


@pytest.fixture(scope="module")
def engine(folder, qgis_app):
    """A real `farslip serve` process for this test module."""
    from tests.plugin.engine_process import EngineProcess

    eng = EngineProcess(folder).start()
    yield eng
    eng.stop()


@pytest.fixture
def make_dock(qgis_app, qtbot, engine, folder, tmp_path):
    """`make_dock(url=None)`: the dock as a user meets it — a fresh project saved in `tmp_path` (results and
    labels go beside it), the engine at `url` (default: this module's engine), the small raster loaded and
    chosen, the whole layer as the area, the map showing the raster; `dock.messages` collects what the
    message bar would show."""
    from qgis.core import QgsProject, QgsRasterLayer
    from qgis.gui import QgsMapCanvas

    from qgis_farslip.dock import FarSLIPDock
    from qgis_farslip.settings import save_engine_settings

    def make(url: str | None = None):
        QgsProject.instance().clear()
        QgsProject.instance().setFileName(str(tmp_path / "project.qgz"))
        save_engine_settings(url or engine.url, engine.token)
        canvas = QgsMapCanvas()
        messages = []
        widget = FarSLIPDock(canvas, lambda level, text: messages.append((level, text)))
        widget.messages = messages
        qtbot.addWidget(widget)
        layer = QgsRasterLayer(str(folder / "small.tif"), "small")
        QgsProject.instance().addMapLayer(layer)
        widget.layer_combo.setLayer(layer)
        canvas.setDestinationCrs(layer.crs())
        canvas.setExtent(layer.extent())
        widget.scope_combo.setCurrentText("Whole layer")
        return widget

    return make


@pytest.fixture
def dock(make_dock):
    """The dock on this module's engine (see `make_dock`)."""
    return make_dock()


@pytest.fixture(scope="module")
def processing(qgis_app):
    """QGIS's Processing framework with the plugin's algorithms registered, for one test module."""
    import sys

    if "/usr/share/qgis/python/plugins" not in sys.path:
        sys.path.append("/usr/share/qgis/python/plugins")  # QGIS's own Processing framework
    from processing.core.Processing import Processing

    Processing.initialize()
    from qgis_farslip.plugin import FarSLIPPlugin

    plugin = FarSLIPPlugin(iface=None)
    plugin.initProcessing()
    import processing as proc

    yield proc
    plugin.unload()


_EXIT_STATUS = 0


def pytest_sessionfinish(session, exitstatus):
    global _EXIT_STATUS
    _EXIT_STATUS = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """End the process here, with pytest's status, once pytest has said everything: left to Python's own
    teardown, QGIS's C++ objects (the application, the project, rendered layers' providers) are destroyed
    in any order, and the process died of a segmentation fault or heap corruption after every test passed."""
    if _APP is not None:
        import os
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT_STATUS)
