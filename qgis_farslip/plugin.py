"""The plugin object QGIS loads: the Processing provider, the dock, and a toolbar button plus a
Plugins → FarSLIP and Raster → FarSLIP menu entry that show (or hide) the dock."""

from __future__ import annotations

from pathlib import Path

from qgis.core import QgsApplication

ICON = str(Path(__file__).resolve().parent / "icon.png")
MENU = "&FarSLIP"


class FarSLIPPlugin:
    """Entry point created by `classFactory`."""

    def __init__(self, iface):
        self.iface = iface
        self.provider = None
        self.dock = None
        self.action = None
        self.setup_action = None

    def initProcessing(self):  # noqa: N802 (QGIS's name)
        from qgis_farslip.processing_provider.provider import FarSLIPProvider

        self.provider = FarSLIPProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):  # noqa: N802 (QGIS's name)
        self.initProcessing()
        if self.iface is None:
            return
        from qgis.PyQt.QtCore import Qt
        from qgis.PyQt.QtGui import QIcon
        from qgis.PyQt.QtWidgets import QAction

        from qgis_farslip.dock import FarSLIPDock

        def notify(level: str, text: str) -> None:
            bar = self.iface.messageBar()
            {"info": bar.pushInfo, "warning": bar.pushWarning}.get(level, bar.pushCritical)("FarSLIP", text)

        self.dock = FarSLIPDock(self.iface.mapCanvas(), notify, self.iface.mainWindow())
        self.iface.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.dock)
        self.action = QAction(QIcon(ICON), "FarSLIP segmentation", self.iface.mainWindow())
        self.action.setObjectName("FarSLIPShowDock")
        self.action.setToolTip("Show or hide the FarSLIP segmentation panel")
        self.action.setCheckable(True)
        self.action.setChecked(True)
        self.action.toggled.connect(self.dock.setVisible)
        self.dock.visibilityChanged.connect(self.action.setChecked)
        self.setup_action = QAction("Set up the FarSLIP engine…", self.iface.mainWindow())
        self.setup_action.setObjectName("FarSLIPSetup")
        self.setup_action.triggered.connect(self.open_setup)
        self.iface.addToolBarIcon(self.action)
        for action in (self.action, self.setup_action):
            self.iface.addPluginToMenu(MENU, action)
            self.iface.addPluginToRasterMenu(MENU, action)

    def open_setup(self):
        """Plugins/Raster → FarSLIP → Set up the FarSLIP engine…: the dock's Engine tab and the set-up."""
        self.dock.show()
        self.dock.tabs.setCurrentIndex(self.dock.tabs.count() - 1)
        return self.dock.engine_panel.open_setup()

    def unload(self):
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
        if self.action is not None:
            self.iface.removeToolBarIcon(self.action)
            for action in (self.action, self.setup_action):
                self.iface.removePluginMenu(MENU, action)
                self.iface.removePluginRasterMenu(MENU, action)
            self.action = self.setup_action = None
        if self.dock is not None:
            self.dock.shut_down()  # its tasks cancelled, the engine this QGIS started stopped
            self.iface.removeDockWidget(self.dock)
            self.dock.deleteLater()
            self.dock = None
