"""Processing algorithm "Segment raster by text prompts": the engine's segmentation as a QGIS tool."""

from __future__ import annotations

import time
from pathlib import Path

from qgis.core import (QgsProcessing, QgsProcessingAlgorithm, QgsProcessingException, QgsProcessingOutputRasterLayer,
                       QgsProcessingOutputString, QgsProcessingOutputVectorLayer, QgsProcessingParameterBoolean,
                       QgsProcessingParameterExtent, QgsProcessingParameterFolderDestination,
                       QgsProcessingParameterNumber, QgsProcessingParameterRasterLayer, QgsProcessingParameterString,
                       QgsRasterLayer)

from qgis_farslip.client import EngineError, in_panel_terms
from qgis_farslip.jobs import SegmentationRequest, run_segmentation
from qgis_farslip.outputs import class_title, run_folder_name
from qgis_farslip.processing_provider import styles
from qgis_farslip.processing_provider.engine_params import IN_PARAMETERS, add_engine_parameters, engine_client, failure
from qgis_farslip.processing_provider.raster_params import BANDS, NODATA, add_raster_choice_parameters, raster_choices
from qgis_farslip.prompt_sets import class_lines
from qgis_farslip.raster_snapshot import RasterSnapshot
from qgis_farslip.taught_files import read_taught


def split_classes(text: str) -> list[str]:
    """Class lines from the dialog's text, as the dock reads its prompt (`prompt_sets.class_lines`); at
    least one, else the one line the dock says too (the engine checks the rest)."""
    classes = class_lines(text)
    if not classes:
        raise QgsProcessingException("type at least one class")
    return classes


TAUGHT_HELP = ("Classes taught from labels: type @/path/to/SITE.classes.json (the file 'Teach classes from labelled "
               "polygons' wrote; it is sent to the engine, on this computer or another) or @job:<id> (that "
               "algorithm's JOB_ID, on the engine that taught them).")


def parse_classes(text: str) -> tuple[list[str], str | None]:
    """(class lines, taught classes) of a CLASSES text; the taught classes without the '@' ("job:<id>" or a
    .classes.json path). A taught file on this computer is read here: its classes name the run, and a file
    that is not taught classes is refused before any job."""
    text = text.strip()
    if not (text.startswith("@job:") or (text.startswith("@") and text.endswith(".classes.json"))):
        return split_classes(text), None
    taught = text[1:].strip()
    path = Path(taught).expanduser()
    if not path.is_file():  # a teach job, or a file on the engine's computer
        return [text], taught
    try:
        return read_taught(path).classes, taught
    except EngineError as exc:
        raise failure(exc) from None


class SegmentRasterAlgorithm(QgsProcessingAlgorithm):
    INPUT, CLASSES, EXTENT, GSD, THRESHOLD, SCORES, MIN_AREA, OUTPUT_FOLDER = (
        "INPUT", "CLASSES", "EXTENT", "GSD", "THRESHOLD", "SCORES", "MIN_AREA", "OUTPUT_FOLDER")
    BANDS, NODATA = BANDS, NODATA

    def name(self) -> str:
        return "segment"

    def displayName(self) -> str:  # noqa: N802
        return "Segment raster by text prompts"

    def shortHelpString(self) -> str:  # noqa: N802
        return ("Open-vocabulary semantic segmentation with FarSLIP. Type one class per line (or separate "
                "classes with ';'); commas separate synonyms of one class, e.g. 'building, roof'. " + TAUGHT_HELP
                + " Runs on the FarSLIP engine configured in the plugin settings (a local engine by default).")

    def createInstance(self):  # noqa: N802
        return SegmentRasterAlgorithm()

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Input raster"))
        self.addParameter(QgsProcessingParameterString(self.CLASSES, "Classes (one per line; commas for synonyms)",
                                                       multiLine=True, defaultValue="building, roof\nroad\ntree\nwater"))
        self.addParameter(QgsProcessingParameterExtent(self.EXTENT, "Extent (empty: the whole layer)", optional=True))
        self.addParameter(QgsProcessingParameterNumber(self.GSD, "Working resolution (m/px; 0 = engine default)",
                                                       QgsProcessingParameterNumber.Type.Double, 0.0, minValue=0.0))
        add_raster_choice_parameters(self, self.INPUT)
        self.addParameter(QgsProcessingParameterNumber(self.THRESHOLD, "Background probability threshold (0 = off)",
                                                       QgsProcessingParameterNumber.Type.Double, 0.0, minValue=0.0,
                                                       maxValue=0.99))
        self.addParameter(QgsProcessingParameterBoolean(self.SCORES, "Also write per-class scores", False))
        self.addParameter(QgsProcessingParameterNumber(self.MIN_AREA, "Drop polygons smaller than (m²)",
                                                       QgsProcessingParameterNumber.Type.Double, 0.0, minValue=0.0))
        self.addParameter(QgsProcessingParameterFolderDestination(self.OUTPUT_FOLDER, "Output folder"))
        add_engine_parameters(self)
        self.addOutput(QgsProcessingOutputRasterLayer("CLASSES_RASTER", "Classes"))
        self.addOutput(QgsProcessingOutputRasterLayer("SCORES", "Scores (one band per class)"))
        self.addOutput(QgsProcessingOutputVectorLayer("POLYGONS", "Polygons", QgsProcessing.SourceType.TypeVectorPolygon))
        self.addOutput(QgsProcessingOutputString("JOB_ID", "Segmentation job id (for 'Check accuracy')"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        layer: QgsRasterLayer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is None:
            raise QgsProcessingException("no input raster layer")
        classes, taught = parse_classes(self.parameterAsString(parameters, self.CLASSES, context))
        extent = None
        if parameters.get(self.EXTENT):
            extent = self.parameterAsExtent(parameters, self.EXTENT, context, layer.crs())
        gsd = self.parameterAsDouble(parameters, self.GSD, context) or None
        threshold = self.parameterAsDouble(parameters, self.THRESHOLD, context) or None
        choices = raster_choices(self, parameters, context)
        folder = Path(self.parameterAsString(parameters, self.OUTPUT_FOLDER, context)) / run_folder_name(
            layer.name(), classes)
        client, settings = engine_client(self, parameters, context)
        request = SegmentationRequest(raster=RasterSnapshot.of(layer), classes=classes, extent=extent,
                                      extent_crs=layer.crs(), gsd=gsd,
                                      **choices, model=settings["model"] or None, threshold=threshold,
                                      scores=self.parameterAsBool(parameters, self.SCORES, context),
                                      min_area=self.parameterAsDouble(parameters, self.MIN_AREA, context),
                                      taught=taught)
        try:
            summary, folder = run_segmentation(
                client, request, str(folder),
                on_progress=lambda p, msg: feedback.setProgress(100 * p),
                is_cancelled=feedback.isCanceled)
        except EngineError as exc:
            raise failure(exc) from None
        outputs = {self.OUTPUT_FOLDER: str(folder), "CLASSES_RASTER": str(folder / summary["files"]["classes"]),
                   "JOB_ID": summary["job_id"]}
        files, found = summary["files"], summary["classes"]
        suffix = f"{layer.name()} — {class_title(classes)} ({time.strftime('%H:%M:%S')})"
        # loaded bottom first: classes, then the first class's score band, polygons on top
        styles.load_styled(context, outputs["CLASSES_RASTER"], f"Classes · {suffix}", "CLASSES_RASTER",
                           styles.classes_raster(found))
        if "scores" in files:
            outputs["SCORES"] = str(folder / files["scores"])
            styles.load_styled(context, outputs["SCORES"], f"Score: {found[0]['name']} · {suffix}", "SCORES",
                               styles.scores(found))
        if "polygons" in files:
            outputs["POLYGONS"] = str(folder / files["polygons"])
            styles.load_styled(context, outputs["POLYGONS"], f"Polygons · {suffix}", "POLYGONS",
                               styles.categorized(found, "polygons"))
        for note in summary.get("notes", []):  # what the engine chose or noticed about the raster
            feedback.pushWarning(in_panel_terms(note, layer.name(), IN_PARAMETERS))
        feedback.pushInfo(", ".join(f"{c['name']}: {c['pixels']} px" for c in summary["classes"]))
        return outputs
