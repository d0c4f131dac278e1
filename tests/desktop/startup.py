"""Runs inside the real QGIS desktop (qgis --code): the plugin installed from its zip is driven as a user
would — Engine tab → Set up… installs an engine environment from a local wheel, then finds the real
engine → Start engine → models listed → segment → label a region → Processing grid — a screenshot after each step, then what a user sees is checked and written
to `<shot>.status` ("ok" or the first problem) before QGIS quits.

Environment: FARSLIP_DESKTOP_RASTER (input), FARSLIP_DESKTOP_SHOT (final PNG; step shots beside it),
FARSLIP_DESKTOP_OUT (project folder), FARSLIP_DESKTOP_ENGINE (the engine's `farslip`),
FARSLIP_DESKTOP_ENGINE_ARGS (extra `serve` arguments: tiny test model), FARSLIP_DESKTOP_PORT,
FARSLIP_DESKTOP_PYTHON and FARSLIP_DESKTOP_WHEEL (the Python and local package the set-up installs from).
"""

import os
import re
import time
from pathlib import Path

from qgis.core import QgsProject, QgsRasterLayer, QgsRectangle
from qgis.PyQt.QtCore import QCoreApplication, QTimer
from qgis.utils import iface, plugins

raster = os.environ["FARSLIP_DESKTOP_RASTER"]
shot = Path(os.environ["FARSLIP_DESKTOP_SHOT"])
out = Path(os.environ["FARSLIP_DESKTOP_OUT"])
status_file = str(shot) + ".status"
steps = []


def snap(name: str) -> None:
    QCoreApplication.processEvents()
    from qgis.PyQt.QtWidgets import QApplication

    screen = QApplication.primaryScreen().grabWindow(0)  # the whole screen: dialogs too
    screen.save(str(shot.with_name(f"{len(steps) + 1:02d}-{name}.png")))
    steps.append(name)


def finish(status: str) -> None:
    with open(status_file, "w") as fh:
        fh.write(status)
    iface.mainWindow().grab().save(str(shot))
    if dock is not None:
        dock.engine_panel.local.stop(wait=True)  # the engine this QGIS started
    QTimer.singleShot(500, QCoreApplication.instance().quit)


def wait_for(condition, then, what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s

    def poll() -> None:
        try:
            if condition():
                then()
            elif time.monotonic() > deadline:
                finish(f"timed out waiting for {what}")
            else:
                QTimer.singleShot(200, poll)
        except Exception as exc:  # a failed check ends the run with its reason
            finish(f"{what}: {type(exc).__name__}: {exc}")

    poll()


def guarded(step, what: str):
    """A step run from a timer: a failed check ends the run with its reason instead of hanging."""
    def run() -> None:
        try:
            step()
        except Exception as exc:
            finish(f"{what}: {type(exc).__name__}: {exc}")
    return run


def check(condition: bool, problem: str) -> None:
    if not condition:
        raise AssertionError(problem)


plugin = plugins.get("qgis_farslip")
dock = getattr(plugin, "dock", None)


def step_installed() -> None:
    check(dock is not None, "plugin not loaded: " + ", ".join(plugins))
    entries = [a.text() for a in iface.rasterMenu().actions()]
    check("&FarSLIP" in entries, f"no FarSLIP entry in the Raster menu: {entries}")
    check(dock.isVisible() and dock.width() <= 420, f"dock not shown at a narrow width ({dock.width()} px)")
    QgsProject.instance().setFileName(str(out / "project.qgz"))
    layer = QgsRasterLayer(raster, os.path.basename(raster).rsplit(".", 1)[0])
    QgsProject.instance().addMapLayer(layer)
    iface.mapCanvas().setExtent(layer.extent())
    dock.layer_combo.setLayer(layer)
    snap("installed")
    dock.tabs.setCurrentIndex(dock.tabs.count() - 1)  # the Engine tab, last
    # 1. the set-up creates an engine environment from a local package (the stand-in engine wheel: no network)
    dialog = dock.engine_panel.open_setup()
    dialog.python_combo.setEditText(os.environ["FARSLIP_DESKTOP_PYTHON"])
    dialog.folder_edit.setText(str(out.parent / "engine-env"))
    dialog.source_edit.setText(os.environ["FARSLIP_DESKTOP_WHEEL"])
    dialog.torch_combo.setCurrentIndex(dialog.torch_combo.findData("none"))
    dialog.pip_edit.setText("--no-index")
    dialog.install_button.click()
    wait_for(lambda: dialog.found_label.text().startswith("Installed:") or dialog.error,
             lambda: step_installed_env(dialog), "the engine set-up", 180)


def step_installed_env(dialog) -> None:
    check(dialog.error is None, f"set-up failed: {dialog.error}")
    check(dialog.progress.value() == 100 and "[3/3] check the engine" in dialog.log_view.toPlainText(),
          "set-up log incomplete")
    check(str(out.parent / "engine-env") in dock.engine_panel.command_edit.text(), dock.engine_panel.command_edit.text())
    snap("setup-installed")
    dialog.close()
    # 2. the real engine for the rest of the check: found on PATH by a fresh set-up dialog
    dock.engine_panel.command_edit.clear()
    found = dock.engine_panel.open_setup()
    wait_for(lambda: found.use_button.isEnabled() and found.found is not None
             and found.found.command == os.environ["FARSLIP_DESKTOP_ENGINE"],
             lambda: step_setup(found), "the set-up to find the engine", 60)


def step_setup(dialog) -> None:
    snap("setup-found-engine")
    dialog.use_button.click()
    panel = dock.engine_panel
    check(panel.command_edit.text().startswith(os.environ["FARSLIP_DESKTOP_ENGINE"]), panel.command_edit.text())
    panel.command_edit.setText(panel.command_edit.text() + " " + os.environ["FARSLIP_DESKTOP_ENGINE_ARGS"])
    panel.toggle_local_engine()
    check(panel.engine_button.text() == "Stop engine", panel.engine_button.text())
    wait_for(lambda: panel.local.state == "ready" and panel.models_list.count() >= 4, step_ready, "the engine", 180)


def step_ready() -> None:
    snap("engine-ready")
    check(dock.online, dock.status_text.text())
    dock.tabs.setCurrentIndex(0)
    dock.scope_combo.setCurrentText("Whole layer")
    dock.prompt_edit.setPlainText("building, roof\nroad\ntree\nwater\ngrass")
    dock.scores_check.setChecked(True)
    wait_for(lambda: dock.legend.count() == 5, step_segment, "the legend", 30)


def step_segment() -> None:
    check(dock.run() is not None, f"run refused: {dock.last_error}")
    wait_for(lambda: dock.run_button.isEnabled(), step_segmented, "the segmentation", 180)


def step_segmented() -> None:
    iface.mapCanvas().refreshAllLayers()
    check(dock.last_error is None, f"segment: {dock.last_error}")
    group = QgsProject.instance().layerTreeRoot().children()[0]
    check(re.fullmatch(r".+ — building, road, tree, water, grass \(\d\d:\d\d:\d\d\)", group.name()), group.name())
    types = [n.layer().renderer().type() for n in group.findLayers()]
    check(types[0] == "categorizedSymbol" and types[-1] == "paletted" and "singlebandpseudocolor" in types, str(types))
    QTimer.singleShot(2000, guarded(step_label, "label"))


def step_label() -> None:
    snap("segmented")
    from qgis_farslip.labelling import LabelMapTool

    dock.label_button.setChecked(True)
    tool = dock.label_tool
    check(isinstance(tool, LabelMapTool), "no label tool")
    e = dock.layer_combo.currentLayer().extent()
    w, h = e.width() / 4, e.height() / 4
    tool.label(QgsRectangle(e.xMinimum() + w, e.yMinimum() + h, e.xMinimum() + 2 * w, e.yMinimum() + 2 * h))
    wait_for(lambda: tool.dialog is not None and tool.dialog.isVisible(), lambda: step_labelled(tool),
             "the region ranking", 60)


def step_labelled(tool) -> None:
    snap("label-dialog")
    tool.dialog.accept()
    dock.label_button.setChecked(False)
    labels = out / "farslip" / "farslip_labels.gpkg"
    check(labels.exists(), f"no {labels}")
    root = QgsProject.instance().layerTreeRoot()
    check(root.children()[0].name() == "FarSLIP labels", root.children()[0].name())
    QTimer.singleShot(500, guarded(step_grid, "processing grid"))


def step_grid() -> None:
    import processing

    layer = dock.layer_combo.currentLayer()
    processing.runAndLoadResults("farslip:classify_grid", {
        "INPUT": layer, "CLASSES": "residential area\nforest\nfarmland",
        "CELL": max(layer.extent().width() / 4, 1.0), "OUTPUT_FOLDER": str(out / "farslip" / "grid")})
    grid = [lyr for lyr in QgsProject.instance().mapLayers().values() if lyr.name().startswith("Scene grid · ")]
    check(len(grid) == 1 and grid[0].renderer().type() == "categorizedSymbol", "grid not loaded styled")
    names = [node.name() for node in QgsProject.instance().layerTreeRoot().children()]
    check(names[0] == "FarSLIP labels" and names[1] == grid[0].name(), f"grid not on top: {names}")
    iface.mapCanvas().refreshAllLayers()
    QTimer.singleShot(2000, lambda: (snap("processing-grid"), finish("ok")))


QTimer.singleShot(3000, guarded(step_installed, "start"))
QTimer.singleShot(400_000, lambda: finish("timed out (" + ", ".join(steps) + ")"))
