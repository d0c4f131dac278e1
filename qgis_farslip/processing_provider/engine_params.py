"""Engine URL and token as (advanced, optional) Processing parameters: batch runs, models and
`qgis_process` can name another engine; the token comes from a QGIS auth config, never a plain string.
Left empty, the plugin's own settings (Engine tab) are used."""

from __future__ import annotations

from qgis.core import (QgsProcessingException, QgsProcessingParameterAuthConfig, QgsProcessingParameterDefinition,
                       QgsProcessingParameterString)

from qgis_farslip.auth import load_token
from qgis_farslip.client import EngineClient, in_panel_terms
from qgis_farslip.settings import engine_settings

ENGINE_URL, ENGINE_AUTH = "ENGINE_URL", "ENGINE_AUTH"


def add_engine_parameters(algorithm) -> None:
    url = QgsProcessingParameterString(ENGINE_URL, "Engine URL (empty: the plugin's engine)", optional=True)
    token = QgsProcessingParameterAuthConfig(ENGINE_AUTH, "Engine token (an authentication configuration)",
                                             optional=True)
    for parameter in (url, token):
        parameter.setFlags(parameter.flags() | QgsProcessingParameterDefinition.Flag.FlagAdvanced)
        algorithm.addParameter(parameter)


IN_PARAMETERS = "(this algorithm's parameter)"  # where an engine message's fix is made, in Processing


def failure(exc: Exception, raster: str | None = None) -> QgsProcessingException:
    """What Processing shows for an engine problem: its message with the fix named as this algorithm's
    parameter (No data, Bands…), a copy sent to the engine named as its layer."""
    return QgsProcessingException(in_panel_terms(str(exc), raster, IN_PARAMETERS))


def engine_client(algorithm, parameters, context) -> tuple[EngineClient, dict]:
    """(client, settings) for the engine the parameters name, else the plugin's settings."""
    settings = engine_settings()
    url = (algorithm.parameterAsString(parameters, ENGINE_URL, context) or "").strip() or settings["url"]
    authcfg = (algorithm.parameterAsString(parameters, ENGINE_AUTH, context) or "").strip()
    token = load_token(authcfg) if authcfg else settings["token"]
    return EngineClient(url, token or None), settings
