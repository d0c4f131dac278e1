"""The dock fits a narrow panel (≤ 400 px, every button on screen) and can be reopened from the toolbar
and the Plugins and Raster menus after the user closed it."""

from __future__ import annotations

import pytest


@pytest.fixture
def dock(qgis_app, qtbot):
    from qgis.gui import QgsMapCanvas

    from qgis_farslip.dock import FarSLIPDock

    widget = FarSLIPDock(QgsMapCanvas())
    qtbot.addWidget(widget)
    return widget


def test_the_dock_needs_at_most_400_px_and_shows_every_button_at_that_width(dock, qgis_app, tmp_path):
    from qgis.PyQt.QtWidgets import QPushButton

    from qgis_farslip.teaching import Taught

    # what appears after teaching and after an accuracy check fits too
    dock.set_taught(Taught("0" * 32, ["building, roof", "road"], 12, 14, 0.7, ["building", "road"]))
    report = {"miou": 0.61, "overall_accuracy": 0.8, "kappa": 0.7, "per_class": {
        "a rather long class name, with synonyms": {"iou": 0.5, "precision": 0.75, "recall": 0.6}}}
    dock.labels_panel.show_report(report, tmp_path / "a-long-folder-name-of-a-run_20261126-140531" / "accuracy_ref")
    assert dock.minimumSizeHint().width() <= 400
    dock.resize(400, 900)
    dock.show()
    for index in range(dock.tabs.count()):
        dock.tabs.setCurrentIndex(index)
        qgis_app.processEvents()
        scroll = dock.tabs.widget(index)
        body = scroll.widget()
        assert body.minimumSizeHint().width() <= 400 - scroll.verticalScrollBar().sizeHint().width()
        assert scroll.horizontalScrollBar().maximum() == 0, dock.tabs.tabText(index)  # nothing off to the side
        for button in body.findChildren(QPushButton):
            right = button.mapTo(scroll.viewport(), button.rect().topRight()).x()
            assert right <= scroll.viewport().width(), (dock.tabs.tabText(index), button.text(), right)
    assert [dock.tabs.tabText(i) for i in range(dock.tabs.count())] == ["Segment", "Scenes", "Labels", "Engine"]


class _Iface:
    """QGIS's main window as far as the plugin uses it: a real QMainWindow with a toolbar and menus."""

    def __init__(self):
        from qgis.gui import QgsMapCanvas, QgsMessageBar
        from qgis.PyQt.QtWidgets import QMainWindow, QMenu

        self.window = QMainWindow()
        self.canvas = QgsMapCanvas()
        self.bar = QgsMessageBar()
        self.toolbar = self.window.addToolBar("Plugins")
        self.menus = {"Plugins": QMenu("Plugins"), "Raster": QMenu("Raster")}

    def mainWindow(self):  # noqa: N802
        return self.window

    def mapCanvas(self):  # noqa: N802
        return self.canvas

    def messageBar(self):  # noqa: N802
        return self.bar

    def addDockWidget(self, area, dock):  # noqa: N802
        self.window.addDockWidget(area, dock)

    def removeDockWidget(self, dock):  # noqa: N802
        self.window.removeDockWidget(dock)

    def addToolBarIcon(self, action):  # noqa: N802
        self.toolbar.addAction(action)

    def removeToolBarIcon(self, action):  # noqa: N802
        self.toolbar.removeAction(action)

    def _menu(self, top, name, action, remove=False):
        sub = next((a.menu() for a in self.menus[top].actions() if a.text() == name), None)
        if sub is None:
            sub = self.menus[top].addMenu(name)
        (sub.removeAction if remove else sub.addAction)(action)

    def addPluginToMenu(self, name, action):  # noqa: N802
        self._menu("Plugins", name, action)

    def removePluginMenu(self, name, action):  # noqa: N802
        self._menu("Plugins", name, action, remove=True)

    def addPluginToRasterMenu(self, name, action):  # noqa: N802
        self._menu("Raster", name, action)

    def removePluginRasterMenu(self, name, action):  # noqa: N802
        self._menu("Raster", name, action, remove=True)


def test_a_closed_dock_comes_back_from_the_toolbar_and_the_raster_menu(qgis_app, qtbot):
    import qgis_farslip

    iface = _Iface()
    plugin = qgis_farslip.classFactory(iface)
    plugin.initGui()
    iface.window.show()
    qtbot.waitUntil(lambda: plugin.dock.isVisible(), timeout=5_000)
    button = [a for a in iface.toolbar.actions() if a.objectName() == "FarSLIPShowDock"]
    assert len(button) == 1 and not button[0].icon().isNull()
    raster = [a for a in iface.menus["Raster"].actions() if a.text() == "&FarSLIP"][0].menu().actions()
    plugins = [a for a in iface.menus["Plugins"].actions() if a.text() == "&FarSLIP"][0].menu().actions()
    assert [a.text() for a in raster] == ["FarSLIP segmentation", "Set up the FarSLIP engine…"] == [
        a.text() for a in plugins]
    raster[1].trigger()  # the set-up dialog opens, on the dock's Engine tab
    assert plugin.dock.engine_panel.setup_dialog.isVisible() and plugin.dock.tabs.currentIndex() == 3
    plugin.dock.engine_panel.setup_dialog.close()
    plugin.dock.close()  # the user closes the panel
    qtbot.waitUntil(lambda: not plugin.dock.isVisible(), timeout=5_000)
    assert not button[0].isChecked()
    raster[0].trigger()
    qtbot.waitUntil(lambda: plugin.dock.isVisible(), timeout=5_000)
    plugin.dock.close()
    qtbot.waitUntil(lambda: not plugin.dock.isVisible(), timeout=5_000)
    button[0].trigger()
    qtbot.waitUntil(lambda: plugin.dock.isVisible(), timeout=5_000)
    plugin.unload()
    assert iface.toolbar.actions() == [] and plugin.dock is None
    iface.window.close()
