"""The plugin's engine settings: URL, model and start command in QgsSettings; the token in QGIS's
authentication database (`auth.py`), only its config id in QgsSettings; a local engine's token is read
from its token file. A token left in clear text by an older version is moved on the first read with the
database unlocked (never a master-password question just for reading settings)."""

from __future__ import annotations

from qgis.core import QgsSettings

from qgis_farslip import auth
from qgis_farslip.client import DEFAULT_URL, read_local_token, token_file_for

PREFIX = "farslip/"
DEFAULT_ENGINE_COMMAND = ""  # empty: the dock finds an installed engine or offers the set-up
_saved: dict[str, str] = {}  # token last stored per auth config (no database write on every call)
_not_stored: dict[str, str] = {}  # engine URL → a token QGIS could not store (no master password): kept for
#                                   this session (the panel, Processing), its storing asked for once


def _token(s: QgsSettings, url: str) -> str:
    plain = s.value(PREFIX + "token", "") or ""
    if plain:  # an older version kept it in QGIS3.ini: moved into the auth database once it is unlocked
        authcfg = auth.store_token(plain, url, s.value(PREFIX + "authcfg", "") or "", prompt=False)
        if authcfg:
            s.setValue(PREFIX + "authcfg", authcfg)
            s.remove(PREFIX + "token")
        return plain
    authcfg = s.value(PREFIX + "authcfg", "") or ""
    stored = auth.load_token(authcfg) if authcfg else ""
    return stored or token_file_for(url)


def engine_settings() -> dict:
    s = QgsSettings()
    url = s.value(PREFIX + "engine_url", DEFAULT_URL) or DEFAULT_URL
    return {"url": url, "token": _not_stored.get(url) or _token(s, url), "model": s.value(PREFIX + "model", "") or "",
            "authcfg": s.value(PREFIX + "authcfg", "") or "",
            "command": s.value(PREFIX + "engine_command", DEFAULT_ENGINE_COMMAND) or DEFAULT_ENGINE_COMMAND}


def save_engine_command(command: str) -> None:
    QgsSettings().setValue(PREFIX + "engine_command", command)


def save_engine_settings(url: str, token: str = "", model: str = "") -> bool:
    """URL and model in QgsSettings; a token other than the local engine's in the auth database. False when
    the token could not be stored (no master password was given): it is not asked for again this session,
    and the token is kept until QGIS closes (for the panel and Processing), an earlier stored one dropped."""
    s = QgsSettings()
    s.setValue(PREFIX + "engine_url", url)
    s.setValue(PREFIX + "model", model)
    s.remove(PREFIX + "token")  # never in clear text
    authcfg = s.value(PREFIX + "authcfg", "") or ""
    if not token or token == read_local_token():
        _not_stored.pop(url, None)
        if authcfg:
            auth.remove(authcfg)
            s.remove(PREFIX + "authcfg")
            _saved.pop(authcfg, None)
        return True
    if authcfg and _saved.get(authcfg) == token:
        return True
    if _not_stored.get(url) == token:
        return False
    stored = auth.store_token(token, url, authcfg)
    if not stored:
        _not_stored[url] = token
        if authcfg:  # an earlier token stays no longer: this one is the engine's now (after a restart: none)
            auth.remove(authcfg)
            s.remove(PREFIX + "authcfg")
            _saved.pop(authcfg, None)
        return False
    authcfg = stored
    _not_stored.pop(url, None)
    s.setValue(PREFIX + "authcfg", authcfg)
    _saved[authcfg] = token
    return True
