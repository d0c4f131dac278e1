"""Labelling a region over no data, against a real engine: the engine gives it no class (best null), and
the plugin says "no data" instead of opening a ranking or failing on the null — in the map tool and in
the "Label regions" Processing algorithm (NULL class and score, the region's valid fraction)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.plugin.engine_process import ENGINE_PYTHON, ROOT

sys.path.append("/usr/share/qgis/python/plugins")  # QGIS's own Processing framework

_HALF_NAN = """
import sys
import numpy as np
from tests.engine.rasters import scene, write_raster
data = scene(200, 400, seed=2)[0].astype(np.float32)
data[:, :, :200] = np.nan  # the western half holds no data
write_raster(sys.argv[1], data)  # EPSG:32633, origin (500000, 5200000), 0.5 m pixels
"""


@pytest.fixture(scope="module")
def half_nan(folder):
    """A 400 x 200 px float raster (200 m x 100 m) in the engine's folder, its western half NaN."""
    path = folder / "half_nan.tif"
    subprocess.run([ENGINE_PYTHON, "-c", _HALF_NAN, str(path)], cwd=ROOT, check=True, timeout=120)
    return path


@pytest.fixture
def half_dock(make_dock, half_nan):
    from qgis.core import QgsProject, QgsRasterLayer

    dock = make_dock()
    layer = QgsRasterLayer(str(half_nan), "half_nan")
    assert layer.isValid()
    QgsProject.instance().addMapLayer(layer)
    dock.layer_combo.setLayer(layer)
    dock.canvas.setExtent(layer.extent())
    dock.prompt_edit.setPlainText("water\ngrass\nbuilding")
    return dock


def _west_east(layer):
    """A 50 m square on the no-data (west) half and one on the data (east) half, in the layer's CRS."""
    from qgis.core import QgsRectangle

    e = layer.extent()
    x, y = e.xMinimum(), e.yMinimum()
    return QgsRectangle(x + 20, y + 20, x + 70, y + 70), QgsRectangle(x + 130, y + 20, x + 180, y + 70)


def test_a_rectangle_over_no_data_says_no_data_and_opens_no_ranking(half_dock, qtbot):
    from qgis_farslip.labelling import LABELS_LAYER, LabelMapTool, NoDataRegion

    dock = half_dock
    layer = dock.layer_combo.currentLayer()
    west, east = _west_east(layer)
    with pytest.raises(NoDataRegion, match="^no data: only 0% of its pixels hold data"):
        dock.labeller().rank(west, layer.crs())
    assert sorted(name for name, _ in dock.labeller().rank(east, layer.crs())) == ["building", "grass", "water"]
    # the map tool: the answer arrives off the UI thread; the message bar says "no data", no dialog opens
    tool = LabelMapTool(dock.canvas, dock.labeller, dock.notify)
    tool.label(west)
    qtbot.waitUntil(lambda: not tool.pending, timeout=30_000)
    assert tool.dialog is None
    level, text = dock.messages[-1]
    assert level == "warning" and text.startswith("no data: only 0% of its pixels hold data")
    from qgis.core import QgsProject

    assert not QgsProject.instance().mapLayersByName(LABELS_LAYER)  # nothing was written
    # a rectangle over the image is ranked as before
    tool.label(east)
    qtbot.waitUntil(lambda: tool.dialog is not None, timeout=30_000)
    tool.dialog.accept()
    assert dock.messages[-1][1].startswith("labelled ")


def test_label_regions_algorithm_writes_null_class_and_the_valid_fraction(qgis_app, processing, engine, half_nan):
    from qgis.core import (NULL, QgsFeature, QgsGeometry, QgsProcessingFeedback, QgsProject, QgsRasterLayer,
                           QgsVectorLayer)

    from qgis_farslip.settings import save_engine_settings

    save_engine_settings(engine.url, engine.token)
    QgsProject.instance().clear()
    layer = QgsRasterLayer(str(half_nan), "half_nan")
    regions = QgsVectorLayer("Polygon?crs=EPSG:32633&field=name:string", "regions", "memory")
    features = []
    for name, rect in zip(("west", "east"), _west_east(layer)):
        f = QgsFeature(regions.fields())
        f.setGeometry(QgsGeometry.fromRect(rect))
        f["name"] = name
        features.append(f)
    regions.dataProvider().addFeatures(features)

    class Warnings(QgsProcessingFeedback):
        said: list = []

        def pushWarning(self, text):  # noqa: N802 (Qt's name)
            self.said.append(text)
            super().pushWarning(text)

    feedback = Warnings()
    result = processing.run("farslip:label_regions", {"INPUT": layer, "REGIONS": regions,
                                                      "CLASSES": "water\ngrass", "OUTPUT": "TEMPORARY_OUTPUT"},
                            feedback=feedback)
    out = {f["name"]: f for f in result["OUTPUT"].getFeatures()}
    assert out["west"]["farslip_class"] == NULL and out["west"]["farslip_score"] == NULL
    assert out["west"]["farslip_valid_fraction"] == 0.0
    assert out["east"]["farslip_class"] in ("water", "grass") and 0 < out["east"]["farslip_score"] <= 1
    assert out["east"]["farslip_valid_fraction"] == 1.0
    assert any(text.startswith("1 of 2 regions are mostly no data") for text in feedback.said)
