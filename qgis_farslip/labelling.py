"""Region labelling: draw a rectangle → the engine ranks the candidate classes (off the UI thread) →
accepting writes the label into the "FarSLIP labels" layer (class, score, model, timestamp), a
GeoPackage in the project's results folder kept at the top of the Layers panel: material for retraining.
A region under half of whose pixels hold data gets no class from the engine: the message bar says so
("no data …") and no ranking opens.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from qgis.core import (QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsFeature, QgsGeometry, QgsProject,
                       QgsRectangle, QgsVectorLayer)
from qgis.gui import QgsMapToolExtent
from qgis.PyQt.QtWidgets import QDialog, QDialogButtonBox, QLabel, QListWidget, QVBoxLayout

from qgis_farslip.background import run_async
from qgis_farslip.client import EngineClient, EngineError
from qgis_farslip.fields import real_field, text_field
from qgis_farslip.jobs import (SegmentationRequest, check_render_size, engine_reads, forget_upload, render_to_geotiff,
                               to_layer_crs)
from qgis_farslip.outputs import default_output_folder
from qgis_farslip.taught_refs import with_taught

LABELS_LAYER = "FarSLIP labels"


class NoDataRegion(EngineError):
    """The engine gave the region no class: under half of its pixels hold data."""


def no_data_text(valid_fraction: float | None) -> str:
    """What the message bar says about a region the engine gives no class."""
    held = "too few" if valid_fraction is None else f"only {valid_fraction:.0%}"  # an engine may omit it
    return f"no data: {held} of its pixels hold data, so the region gets no class (draw it over the image)"


class RegionLabeller:
    """Asks the engine for the best classes of a rectangle, on the raster, classes (by their names, or the classes
    taught from labels the request's `taught` names: see `taught_refs.py`), bands and no data of the Segment tab's
    request, and records accepted labels."""

    def __init__(self, client: EngineClient, request: SegmentationRequest):
        self.client, self.request = client, request
        self.raster, self.classes, self.model = request.raster, request.classes, request.model

    def rank(self, rect: QgsRectangle, crs: QgsCoordinateReferenceSystem,
             polygon: QgsGeometry | None = None) -> list[tuple[str, float]]:
        """(class, probability) pairs, best first, for a rectangle (or a polygon inside it) in `crs`;
        NoDataRegion when the region is mostly no data (the engine gives it no class)."""
        box = to_layer_crs(rect, crs, self.raster).intersect(self.raster.extent)
        if box.isEmpty():
            raise EngineError("the region does not overlap the raster layer")
        path = engine_reads(self.client, self.raster)
        payload: dict = {"classes": self.classes}
        for key in ("model", "bands", "nodata"):
            if getattr(self.request, key) is not None:
                payload[key] = getattr(self.request, key)
        if path is not None:
            region = {"bbox": [box.xMinimum(), box.yMinimum(), box.xMaximum(), box.yMaximum()]}
            if polygon is not None:
                region = {"polygon": polygon_ring(polygon, crs, self.raster.crs)}
            payload.update(input={"path": path}, regions=[region])
            if self.raster.crs_text is not None:  # (else the raster's pixel space, as QGIS draws it)
                payload["crs"] = self.raster.crs_text
        else:  # the engine cannot read this layer: send a rendered copy of the rectangle
            with tempfile.TemporaryDirectory(prefix="farslip-label-") as scratch:
                resolution = max(box.width(), box.height()) / 448
                check_render_size(box, resolution)
                upload = self.client.upload(render_to_geotiff(self.raster, box, resolution, scratch))
            width, height = max(1, round(box.width() / resolution)), max(1, round(box.height() / resolution))
            region = {"bbox": [0, 0, width, height]}
            if polygon is not None:  # the polygon on the copy's pixels (column, row from its top-left corner)
                region = {"polygon": [[(x - box.xMinimum()) * width / box.width(), (box.yMaximum() - y) * height /
                                       box.height()] for x, y in polygon_ring(polygon, crs, self.raster.crs)]}
            payload.update(input={"upload_id": upload}, crs="pixel", regions=[region])
        try:
            region = with_taught(self.client, self.request.taught, payload, self.client.label)["regions"][0]
        finally:
            forget_upload(self.client, payload)
        if region.get("best") is None or not region.get("probabilities"):
            raise NoDataRegion(no_data_text(region.get("valid_fraction")))
        return list(region["probabilities"].items())

    def accept(self, rect: QgsRectangle, crs: QgsCoordinateReferenceSystem, label: str, score: float,
               project: QgsProject | None = None, polygon: QgsGeometry | None = None) -> QgsVectorLayer:
        layer = labels_layer(self.raster.crs, project)
        feature = QgsFeature(layer.fields())
        if polygon is not None:
            geometry = QgsGeometry(polygon)
        else:  # the rectangle ranked: the box around the drawn one in the raster's CRS
            geometry, crs = QgsGeometry.fromRect(to_layer_crs(rect, crs, self.raster)), self.raster.crs
        # stored in the labels layer's CRS (that of the raster first labelled, whichever raster this one is)
        if crs.isValid() and layer.crs().isValid() and crs != layer.crs():
            geometry.transform(QgsCoordinateTransform(crs, layer.crs(), QgsProject.instance()))
        feature.setGeometry(geometry)
        for name, value in (("class", label), ("score", float(score)), ("model", self.model or "engine default"),
                            ("timestamp", time.strftime("%Y-%m-%dT%H:%M:%S"))):
            feature[name] = value
        if not layer.dataProvider().addFeatures([feature])[0]:
            raise EngineError(f"cannot write the label into {layer.source().split('|')[0]}")
        layer.updateExtents()
        layer.triggerRepaint()
        return layer


def polygon_ring(polygon: QgsGeometry, crs: QgsCoordinateReferenceSystem | None = None,
                 target: QgsCoordinateReferenceSystem | None = None) -> list[list[float]]:
    """The outer ring of a (largest part of a) polygon, as [[x, y], ...]: in the target CRS when both CRSs
    are given, else in the polygon's own."""
    geometry = QgsGeometry(polygon)
    if crs is not None and target is not None and crs.isValid() and target.isValid() and crs != target:
        geometry.transform(QgsCoordinateTransform(crs, target, QgsProject.instance()))
    parts = geometry.asMultiPolygon() if geometry.isMultipart() else [geometry.asPolygon()]
    ring = max(parts, key=lambda p: QgsGeometry.fromPolygonXY(p).area())[0]
    return [[p.x(), p.y()] for p in ring]


def labels_path(project: QgsProject | None = None) -> Path:
    return Path(default_output_folder(project)) / "farslip_labels.gpkg"


def labels_layer(crs: QgsCoordinateReferenceSystem, project: QgsProject | None = None) -> QgsVectorLayer:
    """The project's "FarSLIP labels" layer: the GeoPackage in the results folder (created when missing:
    polygons; class, score, model, timestamp), added at the top of the Layers panel."""
    project = project or QgsProject.instance()
    found = project.mapLayersByName(LABELS_LAYER)
    if found:
        return found[0]
    path = labels_path(project)
    if not path.exists():
        from qgis.core import QgsCoordinateTransformContext, QgsFields, QgsVectorFileWriter, QgsWkbTypes

        path.parent.mkdir(parents=True, exist_ok=True)
        fields = QgsFields()
        for field in (text_field("class"), real_field("score"), text_field("model"), text_field("timestamp")):
            fields.append(field)
        options = QgsVectorFileWriter.SaveVectorOptions()
        options.driverName, options.layerName = "GPKG", "labels"
        writer = QgsVectorFileWriter.create(str(path), fields, QgsWkbTypes.Type.Polygon, crs,
                                            QgsCoordinateTransformContext(), options)
        if writer is None or writer.hasError() != QgsVectorFileWriter.WriterError.NoError:
            raise EngineError(f"cannot create {path}; save the project in a folder you can write to")
        del writer
    layer = QgsVectorLayer(f"{path}|layername=labels", LABELS_LAYER, "ogr")
    if not layer.isValid():
        raise EngineError(f"cannot open {path}")
    style_labels(layer)
    project.addMapLayer(layer, False)
    project.layerTreeRoot().insertLayer(0, layer)
    return layer


def style_labels(layer: QgsVectorLayer) -> None:
    """Outlines with the class written inside: the image under a label stays visible."""
    from qgis.core import (QgsFillSymbol, QgsPalLayerSettings, QgsSingleSymbolRenderer, QgsTextBufferSettings,
                           QgsTextFormat, QgsVectorLayerSimpleLabeling)

    layer.setRenderer(QgsSingleSymbolRenderer(QgsFillSymbol.createSimple(
        {"style": "no", "outline_color": "#ffd400", "outline_width": "0.8"})))
    text = QgsTextFormat()
    buffer = QgsTextBufferSettings()
    buffer.setEnabled(True)
    text.setBuffer(buffer)
    settings = QgsPalLayerSettings()
    settings.fieldName = "class"
    settings.setFormat(text)
    layer.setLabeling(QgsVectorLayerSimpleLabeling(settings))
    layer.setLabelsEnabled(True)


class RankingDialog(QDialog):
    """The ranked classes of a region; OK keeps the selected one."""

    def __init__(self, ranking: list[tuple[str, float]], parent=None):
        super().__init__(parent)
        self.setWindowTitle("FarSLIP: label this region")
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Most likely classes:"))
        self.choices = QListWidget()
        for name, prob in ranking:
            self.choices.addItem(f"{name}  {prob:.1%}")
        self.choices.setCurrentRow(0)
        layout.addWidget(self.choices)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        self.ranking = ranking

    def chosen(self) -> tuple[str, float]:
        return self.ranking[max(self.choices.currentRow(), 0)]


class LabelMapTool(QgsMapToolExtent):
    """Draw a rectangle on the map to label it, or click a polygon of `polygon_layer()` to label that."""

    def __init__(self, canvas, make_labeller, notify, polygon_layer=None):
        super().__init__(canvas)
        self.make_labeller, self.notify = make_labeller, notify
        self.polygon_layer = polygon_layer or (lambda: None)
        self.pending = False
        self._asked = 0
        self.dialog = None
        self.extentChanged.connect(self.on_rectangle)

    def canvasReleaseEvent(self, event):  # noqa: N802 (Qt's name)
        self._click = self.toMapCoordinates(event.pos())
        super().canvasReleaseEvent(event)

    def polygon_at(self, point) -> QgsGeometry | None:
        """The polygon of the chosen layer under a map point (canvas CRS), in the canvas CRS."""
        layer = self.polygon_layer()
        if layer is None:
            return None
        canvas_crs = self.canvas().mapSettings().destinationCrs()
        to_layer = QgsCoordinateTransform(canvas_crs, layer.crs(), QgsProject.instance())
        hit = QgsGeometry.fromPointXY(to_layer.transform(point))
        for feature in layer.getFeatures(hit.boundingBox().buffered(1e-9)):
            if feature.geometry().contains(hit):
                geometry = QgsGeometry(feature.geometry())
                geometry.transform(QgsCoordinateTransform(layer.crs(), canvas_crs, QgsProject.instance()))
                return geometry
        return None

    def on_rectangle(self, rect: QgsRectangle) -> None:
        polygon = None
        if rect.isEmpty():  # a click: the polygon under it, if any
            polygon = self.polygon_at(getattr(self, "_click", None)) if getattr(self, "_click", None) else None
            if polygon is None:
                return
            rect = polygon.boundingBox()
        self.label(rect, polygon)

    def label(self, rect: QgsRectangle, polygon: QgsGeometry | None = None) -> None:
        """Ask the engine off the UI thread; the ranking opens in a dialog when it arrives."""
        crs = self.canvas().mapSettings().destinationCrs()
        try:
            labeller = self.make_labeller()
        except EngineError as exc:
            self.notify("critical", str(exc))
            return
        self.pending = True
        self._asked += 1
        asked = self._asked
        self.notify("info", "asking the engine for this region's classes… (Esc cancels)")
        run_async(lambda: labeller.rank(rect, crs, polygon),
                  lambda ranking: asked == self._asked and self._ranked(labeller, rect, crs, polygon, ranking),
                  lambda exc: asked == self._asked and self._failed(exc), owner=self)

    def cancel(self) -> None:
        """Esc: forget the question in flight (its answer is dropped) and say so."""
        if self.pending:
            self._asked += 1
            self.pending = False
            self.clearRubberBand()
            self.notify("info", "labelling cancelled")

    def keyPressEvent(self, event):  # noqa: N802 (Qt's name)
        from qgis.PyQt.QtCore import Qt

        if event.key() == Qt.Key.Key_Escape and self.pending:
            self.cancel()
            event.accept()
            return
        super().keyPressEvent(event)

    def _failed(self, exc: EngineError) -> None:
        self.pending = False
        self.clearRubberBand()
        self.notify("warning" if isinstance(exc, NoDataRegion) else "critical", str(exc))

    def _ranked(self, labeller, rect, crs, polygon, ranking) -> None:
        self.pending = False
        self.dialog = dialog = RankingDialog(ranking, self.canvas())

        def accepted() -> None:
            name, score = dialog.chosen()
            try:
                labeller.accept(rect, crs, name, score, polygon=polygon)
            except EngineError as exc:
                self.notify("critical", str(exc))
                return
            self.notify("info", f"labelled {name} ({score:.0%})")

        dialog.accepted.connect(accepted)
        dialog.finished.connect(lambda _result: self.clearRubberBand())
        dialog.open()
