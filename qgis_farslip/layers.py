"""Result layers: a paletted class raster and a categorized polygon layer with the same colours and
legend (class names from the engine's summary), an optional score raster, in one layer group."""

from __future__ import annotations

from pathlib import Path

from qgis.core import (QgsCategorizedSymbolRenderer, QgsFillSymbol, QgsPalettedRasterRenderer, QgsProject,
                       QgsRasterLayer, QgsRendererCategory, QgsVectorLayer)
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


def add_result_group(title: str, layers: list, project: QgsProject | None = None):
    """Add layers (top first) in a new group at the top of the layer tree; returns the group."""
    project = project or QgsProject.instance()
    group = project.layerTreeRoot().insertGroup(0, title)
    for layer in layers:
        project.addMapLayer(layer, False)
        group.addLayer(layer)
    return group


def segmentation_layers(folder: Path, summary: dict) -> list:
    """The layers of a finished segmentation's files in `folder` (polygons on top)."""
    files = summary["files"]
    classes = summary["classes"]
    layers = []
    if "polygons" in files:
        layers.append(polygon_layer(folder / files["polygons"], "FarSLIP polygons", classes))
    layers.append(class_raster_layer(folder / files["classes"], "FarSLIP classes", classes))
    if "scores" in files:
        scores = QgsRasterLayer(str(folder / files["scores"]), "FarSLIP scores", "gdal")
        scores.setOpacity(0.8)
        layers.append(scores)
    return layers
