"""The plugin object QGIS loads: registers the Processing provider (the dock and map tools hang off it)."""

from __future__ import annotations

from qgis.core import QgsApplication


class FarSLIPPlugin:
    """Entry point created by `classFactory`."""

    def __init__(self, iface):
        self.iface = iface
        self.provider = None

    def initProcessing(self):  # noqa: N802 (QGIS's name)
        from qgis_farslip.processing_provider.provider import FarSLIPProvider

        self.provider = FarSLIPProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):  # noqa: N802 (QGIS's name)
        self.initProcessing()

    def unload(self):
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
