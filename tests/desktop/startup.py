"""Runs inside the real QGIS desktop (qgis --code): segment a raster with the dock, save a screenshot, quit.

Environment: FARSLIP_DESKTOP_RASTER (input), FARSLIP_DESKTOP_SHOT (PNG to write), FARSLIP_DESKTOP_OUT (results).
"""

import os

from qgis.core import QgsProject, QgsRasterLayer
from qgis.PyQt.QtCore import QCoreApplication, QTimer
from qgis.utils import iface, plugins

raster = os.environ["FARSLIP_DESKTOP_RASTER"]
shot = os.environ["FARSLIP_DESKTOP_SHOT"]
status_file = shot + ".status"


def finish(status: str) -> None:
    with open(status_file, "w") as fh:
        fh.write(status)
    iface.mainWindow().grab().save(shot)
    QTimer.singleShot(500, QCoreApplication.instance().quit)


def start() -> None:
    plugin = plugins.get("qgis_farslip")
    if plugin is None or getattr(plugin, "dock", None) is None:
        finish("plugin not loaded: " + ", ".join(plugins))
        return
    layer = QgsRasterLayer(raster, os.path.basename(raster))
    QgsProject.instance().addMapLayer(layer)
    iface.mapCanvas().setExtent(layer.extent())
    dock = plugin.dock
    dock.check_engine()
    dock.layer_combo.setLayer(layer)
    dock.scope_combo.setCurrentText("Whole layer")
    dock.prompt_edit.setPlainText("building, roof\nroad\ntree\nwater\ngrass")
    dock.update_legend()
    dock.folder_widget.setFilePath(os.environ["FARSLIP_DESKTOP_OUT"])
    task = dock.run()
    if task is None:
        finish(f"run refused: {dock.last_error}")
        return

    def poll() -> None:
        if dock.run_button.isEnabled():
            iface.mapCanvas().refreshAllLayers()
            QTimer.singleShot(3000, lambda: finish("ok" if dock.last_error is None else dock.last_error))
        else:
            QTimer.singleShot(300, poll)

    poll()


QTimer.singleShot(2000, start)
QTimer.singleShot(240_000, lambda: finish("timed out"))
