"""Processing algorithm "Segment raster by text prompts": the engine's segmentation as a QGIS tool."""

from __future__ import annotations

import time
from pathlib import Path

from qgis.core import (QgsProcessing, QgsProcessingAlgorithm, QgsProcessingContext, QgsProcessingException,
                       QgsProcessingLayerPostProcessorInterface, QgsProcessingOutputRasterLayer,
                       QgsProcessingOutputVectorLayer, QgsProcessingParameterBoolean, QgsProcessingParameterExtent,
                       QgsProcessingParameterFolderDestination, QgsProcessingParameterNumber,
                       QgsProcessingParameterRasterLayer, QgsProcessingParameterString, QgsRasterLayer)

from qgis_farslip.client import EngineClient, EngineError
from qgis_farslip.jobs import SegmentationRequest, run_segmentation
from qgis_farslip.layers import class_raster_layer, polygon_layer
from qgis_farslip.settings import engine_settings


def split_classes(text: str) -> list[str]:
    """Class lines from the dialog's text: ';' or new lines between classes (the engine checks them)."""
    return [line.strip() for chunk in text.splitlines() for line in chunk.split(";") if line.strip()]


class _Style(QgsProcessingLayerPostProcessorInterface):
    """Applies the class colours and names to an output layer once Processing has loaded it."""

    def __init__(self, classes: list[dict], kind: str):
        super().__init__()
        self.classes, self.kind = classes, kind

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802
        styled = (class_raster_layer(Path(layer.source()), layer.name(), self.classes) if self.kind == "raster"
                  else polygon_layer(Path(layer.source().split("|")[0]), layer.name(), self.classes))
        layer.setRenderer(styled.renderer().clone())
        layer.triggerRepaint()


# Processing runs a clone of the algorithm and drops it before loading the outputs, so the style
# post-processors must be kept alive here (the last few runs are plenty).
_LIVE_STYLES: list[_Style] = []


class SegmentRasterAlgorithm(QgsProcessingAlgorithm):
    INPUT, CLASSES, EXTENT, GSD, THRESHOLD, SCORES, MIN_AREA, OUTPUT_FOLDER = (
        "INPUT", "CLASSES", "EXTENT", "GSD", "THRESHOLD", "SCORES", "MIN_AREA", "OUTPUT_FOLDER")

    def name(self) -> str:
        return "segment"

    def displayName(self) -> str:  # noqa: N802
        return "Segment raster by text prompts"

    def shortHelpString(self) -> str:  # noqa: N802
        return ("Open-vocabulary semantic segmentation with FarSLIP. Type one class per line (or separate "
                "classes with ';'); commas separate synonyms of one class, e.g. 'building, roof'. Runs on the "
                "FarSLIP engine configured in the plugin settings (a local engine by default).")

    def createInstance(self):  # noqa: N802
        return SegmentRasterAlgorithm()

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Input raster"))
        self.addParameter(QgsProcessingParameterString(self.CLASSES, "Classes (one per line; commas for synonyms)",
                                                       multiLine=True, defaultValue="building, roof\nroad\ntree\nwater"))
        self.addParameter(QgsProcessingParameterExtent(self.EXTENT, "Extent (empty: the whole layer)", optional=True))
        self.addParameter(QgsProcessingParameterNumber(self.GSD, "Working resolution (m/px; 0 = engine default)",
                                                       QgsProcessingParameterNumber.Type.Double, 0.0, minValue=0.0))
        self.addParameter(QgsProcessingParameterNumber(self.THRESHOLD, "Background probability threshold (0 = off)",
                                                       QgsProcessingParameterNumber.Type.Double, 0.0, minValue=0.0,
                                                       maxValue=0.99))
        self.addParameter(QgsProcessingParameterBoolean(self.SCORES, "Also write per-class scores", False))
        self.addParameter(QgsProcessingParameterNumber(self.MIN_AREA, "Drop polygons smaller than (m²)",
                                                       QgsProcessingParameterNumber.Type.Double, 0.0, minValue=0.0))
        self.addParameter(QgsProcessingParameterFolderDestination(self.OUTPUT_FOLDER, "Output folder"))
        self.addOutput(QgsProcessingOutputRasterLayer("CLASSES_RASTER", "Classes"))
        self.addOutput(QgsProcessingOutputVectorLayer("POLYGONS", "Polygons", QgsProcessing.SourceType.TypeVectorPolygon))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        layer: QgsRasterLayer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is None:
            raise QgsProcessingException("no input raster layer")
        classes = split_classes(self.parameterAsString(parameters, self.CLASSES, context))
        if not classes:
            raise QgsProcessingException("type at least one class")
        extent = None
        if parameters.get(self.EXTENT):
            extent = self.parameterAsExtent(parameters, self.EXTENT, context, layer.crs())
        gsd = self.parameterAsDouble(parameters, self.GSD, context) or None
        threshold = self.parameterAsDouble(parameters, self.THRESHOLD, context) or None
        folder = Path(self.parameterAsString(parameters, self.OUTPUT_FOLDER, context)) / time.strftime(
            "farslip_%Y%m%d_%H%M%S")
        settings = engine_settings()
        client = EngineClient(settings["url"], settings["token"] or None)
        request = SegmentationRequest(layer=layer, classes=classes, extent=extent, extent_crs=layer.crs(), gsd=gsd,
                                      model=settings["model"] or None, threshold=threshold,
                                      scores=self.parameterAsBool(parameters, self.SCORES, context),
                                      min_area=self.parameterAsDouble(parameters, self.MIN_AREA, context))
        try:
            summary, folder = run_segmentation(
                client, request, str(folder),
                on_progress=lambda p, msg: feedback.setProgress(100 * p),
                is_cancelled=feedback.isCanceled)
        except EngineError as exc:
            raise QgsProcessingException(str(exc)) from None
        outputs = {self.OUTPUT_FOLDER: str(folder), "CLASSES_RASTER": str(folder / summary["files"]["classes"])}
        details = [("CLASSES_RASTER", "FarSLIP classes", "raster")]
        if "polygons" in summary["files"]:
            outputs["POLYGONS"] = str(folder / summary["files"]["polygons"])
            details.insert(0, ("POLYGONS", "FarSLIP polygons", "vector"))
        for key, name, kind in details:
            if context.project() is not None:
                details = QgsProcessingContext.LayerDetails(name, context.project(), key)
                style = _Style(summary["classes"], kind)
                _LIVE_STYLES.append(style)
                del _LIVE_STYLES[:-20]
                details.setPostProcessor(style)
                context.addLayerToLoadOnCompletion(outputs[key], details)
        feedback.pushInfo(", ".join(f"{c['name']}: {c['pixels']} px" for c in summary["classes"]))
        return outputs
