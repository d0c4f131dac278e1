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
        if self.iface is None:
            return
        from qgis.PyQt.QtCore import Qt

        from qgis_farslip.dock import FarSLIPDock

        def notify(level: str, text: str) -> None:
            bar = self.iface.messageBar()
            {"info": bar.pushInfo, "warning": bar.pushWarning}.get(level, bar.pushCritical)("FarSLIP", text)

        self.dock = FarSLIPDock(self.iface.mapCanvas(), notify, self.iface.mainWindow())
        self.iface.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.dock)

    def unload(self):
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
        if getattr(self, "dock", None) is not None:
            if self.dock.engine_process is not None:
                self.dock.toggle_local_engine()  # stop the engine this QGIS started
            self.iface.removeDockWidget(self.dock)
            self.dock.deleteLater()
            self.dock = None
