"""The engine token is kept in QGIS's authentication database, never in clear text in QGIS3.ini; a
token an older version left there is moved; a local engine's token file is read, not copied."""

from __future__ import annotations

from pathlib import Path


def _ini_text() -> str:
    from qgis.core import QgsSettings

    return Path(QgsSettings().fileName()).read_text(encoding="utf-8", errors="replace")


def test_a_remote_token_goes_to_the_auth_database_not_the_settings_file(qgis_app):
    from qgis.core import QgsApplication, QgsSettings

    from qgis_farslip.settings import engine_settings, save_engine_settings

    secret = "remote-token-5f1c0e9a"
    save_engine_settings("https://gpu.example.org:8765", secret, "farslip2-vit-b-16")
    QgsSettings().sync()
    assert secret not in _ini_text()
    settings = engine_settings()
    assert settings["token"] == secret and settings["url"] == "https://gpu.example.org:8765"
    manager = QgsApplication.authManager()
    assert settings["authcfg"] in manager.configIds()
    assert manager.availableAuthMethodConfigs()[settings["authcfg"]].name() == "FarSLIP engine"
    save_engine_settings("https://gpu.example.org:8765", "")  # cleared: removed from the database too
    assert settings["authcfg"] not in manager.configIds() and engine_settings()["authcfg"] == ""


def test_a_clear_text_token_from_an_older_version_is_moved(qgis_app):
    from qgis.core import QgsSettings

    from qgis_farslip.settings import engine_settings

    QgsSettings().setValue("farslip/token", "old-token-77aa")
    QgsSettings().sync()
    assert engine_settings()["token"] == "old-token-77aa"
    QgsSettings().sync()
    assert "old-token-77aa" not in _ini_text() and QgsSettings().value("farslip/token", "") == ""
    assert engine_settings()["token"] == "old-token-77aa"  # now from the auth database


def test_the_local_engine_token_is_read_from_its_file_and_not_stored(qgis_app, tmp_path, monkeypatch):
    from qgis.core import QgsApplication

    from qgis_farslip.settings import engine_settings, save_engine_settings

    monkeypatch.setenv("FARSLIP_CONFIG_DIR", str(tmp_path))
    (tmp_path / "token").write_text("local-token-1234\n")
    before = set(QgsApplication.authManager().configIds())
    save_engine_settings("http://127.0.0.1:8765", "local-token-1234")
    assert set(QgsApplication.authManager().configIds()) <= before
    assert engine_settings()["token"] == "local-token-1234"
