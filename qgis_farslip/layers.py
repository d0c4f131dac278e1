"""Result layers: a paletted class raster and a categorized polygon layer with the same colours and
legend (class names from the engine's summary), optional per-class score layers (one band each, a
transparent-to-class-colour ramp, the first class shown), in one layer group named after the run."""

from __future__ import annotations

from pathlib import Path

import time

from qgis.core import (QgsCategorizedSymbolRenderer, QgsColorRampShader, QgsFillSymbol, QgsPalettedRasterRenderer,
                       QgsProject, QgsRasterLayer, QgsRasterShader, QgsRendererCategory,
                       QgsSingleBandPseudoColorRenderer, QgsVectorLayer)
from qgis.PyQt.QtGui import QColor


def class_raster_layer(path: Path, name: str, classes: list[dict]) -> QgsRasterLayer:
    layer = QgsRasterLayer(str(path), name, "gdal")
    if not layer.isValid():
        raise ValueError(f"QGIS cannot open {path}")
    palette = [QgsPalettedRasterRenderer.Class(c["index"], QColor(c["colour"]), c["name"]) for c in classes]
    layer.setRenderer(QgsPalettedRasterRenderer(layer.dataProvider(), 1, palette))
    return layer


def polygon_layer(path: Path, name: str, classes: list[dict], layer_name: str = "polygons",
                  field: str = "class") -> QgsVectorLayer:
    layer = QgsVectorLayer(f"{path}|layername={layer_name}", name, "ogr")
    if not layer.isValid():
        raise ValueError(f"QGIS cannot open {path}")
    categories = []
    for c in classes:
        symbol = QgsFillSymbol.createSimple({"color": QColor(c["colour"]).name(), "outline_style": "no"})
        symbol.setOpacity(0.7)
        categories.append(QgsRendererCategory(c["name"], symbol, c["name"]))
    layer.setRenderer(QgsCategorizedSymbolRenderer(field, categories))
    return layer


def score_layer(path: Path, name: str, band: int, colour: str) -> QgsRasterLayer:
    """One class's probability (band `band`) drawn from transparent (0) to the class colour (1)."""
    layer = QgsRasterLayer(str(path), name, "gdal")
    if not layer.isValid():
        raise ValueError(f"QGIS cannot open {path}")
    top = 1.0 if layer.dataProvider().bandScale(band) != 1 else 254.0  # the file's scale gives 0–1
    end = QColor(colour)
    start = QColor(end)
    start.setAlpha(0)
    ramp = QgsColorRampShader(0.0, top, None, QgsColorRampShader.Type.Interpolated)
    ramp.setColorRampItemList([QgsColorRampShader.ColorRampItem(0.0, start, "0"),
                               QgsColorRampShader.ColorRampItem(top, end, "1")])
    shader = QgsRasterShader()
    shader.setRasterShaderFunction(ramp)
    renderer = QgsSingleBandPseudoColorRenderer(layer.dataProvider(), band, shader)
    renderer.setClassificationMin(0.0)
    renderer.setClassificationMax(top)
    layer.setRenderer(renderer)
    return layer


class Subgroup(list):
    """Layers shown as a group inside the run's group; only `visible` is ticked."""

    def __init__(self, name: str, layers: list, visible: int = 0):
        super().__init__(layers)
        self.name, self.visible = name, visible


def add_result_group(title: str, layers: list, project: QgsProject | None = None):
    """Add layers (top first; a `Subgroup` as a group) in a new group at the top of the layer tree, below
    the labels layer if there is one (it stays on top); returns the group."""
    project = project or QgsProject.instance()
    root = project.layerTreeRoot()
    from qgis_farslip.labelling import LABELS_LAYER

    on_top = sum(1 for node in root.children() if node.name() == LABELS_LAYER)
    group = root.insertGroup(min(on_top, len(root.children())), title)
    for item in layers:
        if isinstance(item, Subgroup):
            sub = group.addGroup(item.name)
            for index, layer in enumerate(item):
                project.addMapLayer(layer, False)
                sub.addLayer(layer).setItemVisibilityChecked(index == item.visible)
            sub.setExpanded(False)
        else:
            project.addMapLayer(item, False)
            group.addLayer(item)
    return group


def segmentation_layers(folder: Path, summary: dict, raster: str = "", when: float | None = None) -> list:
    """The layers of a finished segmentation's files in `folder`: polygons, scores, classes (top first)."""
    files = summary["files"]
    classes = summary["classes"]
    suffix = f" · {raster} {time.strftime('%H:%M:%S', time.localtime(when))}" if raster else ""
    layers: list = []
    if "polygons" in files:
        layers.append(polygon_layer(folder / files["polygons"], f"Polygons{suffix}", classes))
    if "scores" in files:
        layers.append(Subgroup("Scores (tick a class)", [
            score_layer(folder / files["scores"], f"Score: {c['name']}", c["index"] + 1, c["colour"])
            for c in classes]))
    layers.append(class_raster_layer(folder / files["classes"], f"Classes{suffix}", classes))
    return layers
