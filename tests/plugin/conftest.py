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
