"""The plugin's engine settings in QgsSettings (URL, token, model), with local defaults."""

from __future__ import annotations

from qgis.core import QgsSettings

from qgis_farslip.client import DEFAULT_URL, read_local_token

PREFIX = "farslip/"


DEFAULT_ENGINE_COMMAND = ""  # empty: the dock finds an installed engine or offers the set-up


def engine_settings() -> dict:
    s = QgsSettings()
    url = s.value(PREFIX + "engine_url", DEFAULT_URL) or DEFAULT_URL
    token = s.value(PREFIX + "token", "") or read_local_token()
    return {"url": url, "token": token, "model": s.value(PREFIX + "model", "") or "",
            "command": s.value(PREFIX + "engine_command", DEFAULT_ENGINE_COMMAND) or DEFAULT_ENGINE_COMMAND}


def save_engine_command(command: str) -> None:
    QgsSettings().setValue(PREFIX + "engine_command", command)


def save_engine_settings(url: str, token: str = "", model: str = "") -> None:
    s = QgsSettings()
    s.setValue(PREFIX + "engine_url", url)
    s.setValue(PREFIX + "token", token)
    s.setValue(PREFIX + "model", model)
