"""Labelled polygons over the plugin tests' `small.tif` (240 × 320 px at 0.5 m, EPSG:32633, origin
500000, 5200000; training.data.synthetic's layout: water west of column 128, a road across rows
105–135, roofs at columns 160–220 and 250–310, grass between), drawn a little inside the true areas."""

from __future__ import annotations

ORIGIN, RES = (500000.0, 5200000.0), 0.5

# (class, col0, row0, col1, row1)
LABELS = [("water", 10, 20, 110, 100), ("water", 10, 150, 110, 220),
          ("grass", 130, 20, 155, 100), ("grass", 225, 20, 245, 100),
          ("roof", 170, 20, 210, 70), ("roof", 255, 155, 305, 205),
          ("road", 140, 112, 220, 128), ("road", 230, 112, 310, 128)]
REFERENCE = [("water", 20, 30, 100, 200), ("grass", 130, 150, 155, 220), ("roof", 165, 155, 215, 205),
             ("road", 150, 110, 300, 130)]


def rectangle(col0, row0, col1, row1):
    from qgis.core import QgsGeometry, QgsRectangle

    x, y = ORIGIN
    return QgsGeometry.fromRect(QgsRectangle(x + col0 * RES, y - row1 * RES, x + col1 * RES, y - row0 * RES))


def add_polygons(layer, items, field: str = "class") -> None:
    from qgis.core import QgsFeature

    features = []
    for name, *box in items:
        feature = QgsFeature(layer.fields())
        feature.setGeometry(rectangle(*box))
        feature[field] = name
        features.append(feature)
    assert layer.dataProvider().addFeatures(features)[0]
    layer.updateExtents()


def memory_layer(name: str, items, field: str = "class"):
    """A polygon layer (EPSG:32633) with a text field holding the class."""
    from qgis.core import QgsVectorLayer

    layer = QgsVectorLayer(f"Polygon?crs=EPSG:32633&field={field}:string", name, "memory")
    add_polygons(layer, items, field)
    return layer
