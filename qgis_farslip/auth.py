"""The engine token in QGIS's authentication database (QgsAuthManager), never in clear text in QGIS3.ini.

The plugin keeps one configuration, "FarSLIP engine" (method EsriToken: a plain token, encrypted by the
master password); the settings hold only its id. A local engine's token is read from its token file and
never stored. Processing algorithms accept any auth config: its "token" (EsriToken), "password"
(Basic) or "Authorization" header value is the bearer token.
"""

from __future__ import annotations

from qgis.core import Qgis, QgsApplication, QgsAuthMethodConfig, QgsMessageLog

AUTH_NAME = "FarSLIP engine"
METHOD = "EsriToken"


def _manager():
    manager = QgsApplication.authManager()
    return None if manager is None or manager.isDisabled() else manager


def load_token(authcfg: str) -> str:
    """The bearer token an auth config holds ('' when it holds none or the database is locked)."""
    manager = _manager()
    if not authcfg or manager is None:
        return ""
    config = QgsAuthMethodConfig()
    if not manager.loadAuthenticationConfig(authcfg, config, True):
        return ""
    for key in ("token", "password", "Authorization", "authorization"):
        value = config.config(key)
        if value:
            return value[7:].strip() if value.lower().startswith("bearer ") else value.strip()
    return ""


def store_token(token: str, url: str, authcfg: str = "", prompt: bool = True) -> str:
    """Save `token` in the auth database (updating `authcfg` if it exists); returns the config id, or ''
    when QGIS could not store it (no master password given): then nothing is written anywhere.
    With `prompt=False` a locked database is left alone (no master-password question, e.g. in qgis_process)."""
    manager = _manager()
    if manager is None or (not prompt and not manager.masterPasswordIsSet()):
        return ""
    config = QgsAuthMethodConfig(METHOD)
    if authcfg and authcfg in manager.configIds():
        manager.loadAuthenticationConfig(authcfg, config, True)
        config.setMethod(METHOD)
    config.setName(AUTH_NAME)
    config.setUri(url)
    config.setConfig("token", token)
    if config.id():
        ok = manager.updateAuthenticationConfig(config)
    else:
        answer = manager.storeAuthenticationConfig(config)
        ok = answer[0] if isinstance(answer, tuple) else bool(answer)
    if not ok:
        QgsMessageLog.logMessage("the engine token was not saved: QGIS's authentication database is locked "
                                 "(set or enter the master password in Settings → Options → Authentication)",
                                 "FarSLIP", Qgis.MessageLevel.Warning)
        return ""
    return config.id()


def remove(authcfg: str) -> None:
    manager = _manager()
    if manager is not None and authcfg and authcfg in manager.configIds():
        manager.removeAuthenticationConfig(authcfg)
