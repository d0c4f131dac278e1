"""Processing algorithms "Teach classes from labelled polygons" (→ a .classes.json file and the engine's
teach job id, which "Segment raster by text prompts" takes as classes `@job:<id>`) and "Check accuracy
against reference polygons" (a segmentation job id → accuracy.json, confusion.csv, confusion.png)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from qgis.core import (QgsProcessing, QgsProcessingAlgorithm, QgsProcessingException, QgsProcessingOutputFile,
                       QgsProcessingOutputNumber, QgsProcessingOutputString, QgsProcessingParameterFeatureSource,
                       QgsProcessingParameterField, QgsProcessingParameterFileDestination,
                       QgsProcessingParameterFolderDestination, QgsProcessingParameterNumber,
                       QgsProcessingParameterRasterLayer, QgsProcessingParameterString)

from qgis_farslip.client import EngineError
from qgis_farslip.processing_provider.engine_params import add_engine_parameters, engine_client, failure
from qgis_farslip.processing_provider.raster_params import add_raster_choice_parameters, raster_choices
from qgis_farslip.processing_provider.segment import split_classes
from qgis_farslip.raster_snapshot import RasterSnapshot, crs_text
from qgis_farslip.taught_files import remember
from qgis_farslip.teaching import (ACCURACY_FILES, TAUGHT_FILE, TeachRequest, labelled_polygons,
                                   report_headline, run_accuracy, run_teach)


def _progress(feedback):
    return lambda p, _msg: feedback.setProgress(100 * p)


class TeachClassesAlgorithm(QgsProcessingAlgorithm):
    INPUT, CLASSES, LABELS, FIELD, GSD, OUTPUT = "INPUT", "CLASSES", "LABELS", "FIELD", "GSD", "OUTPUT"

    def name(self) -> str:
        return "teach_classes"

    def displayName(self) -> str:  # noqa: N802
        return "Teach classes from labelled polygons"

    def shortHelpString(self) -> str:  # noqa: N802
        return ("Polygons labelled with class names (e.g. the FarSLIP labels layer) teach the engine what the "
                "classes look like on this raster. Writes the taught classes as a .classes.json file and gives the "
                "engine's job id: type @job:<that id> as the classes of 'Segment raster by text prompts' to use "
                "them (while the engine keeps the job). Teach at the resolution you segment at.")

    def createInstance(self):  # noqa: N802
        return TeachClassesAlgorithm()

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Input raster"))
        self.addParameter(QgsProcessingParameterString(self.CLASSES, "Classes (one per line; commas for synonyms)",
                                                       multiLine=True, defaultValue="building, roof\nroad\ntree\nwater"))
        self.addParameter(QgsProcessingParameterFeatureSource(self.LABELS, "Labelled polygons",
                                                              [QgsProcessing.SourceType.TypeVectorPolygon]))
        self.addParameter(QgsProcessingParameterField(self.FIELD, "Class field", "class", self.LABELS))
        self.addParameter(QgsProcessingParameterNumber(self.GSD, "Working resolution (m/px; 0 = engine default)",
                                                       QgsProcessingParameterNumber.Type.Double, 0.0, minValue=0.0))
        add_raster_choice_parameters(self, self.INPUT)
        self.addParameter(QgsProcessingParameterFileDestination(self.OUTPUT, "Taught classes",
                                                                "Taught classes (*.classes.json)"))
        add_engine_parameters(self)
        self.addOutput(QgsProcessingOutputString("JOB_ID", "Teach job id (classes @job:<id>)"))
        self.addOutput(QgsProcessingOutputNumber("ALPHA", "Label weight α"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is None:
            raise QgsProcessingException("no input raster layer")
        classes = split_classes(self.parameterAsString(parameters, self.CLASSES, context))
        source = self.parameterAsSource(parameters, self.LABELS, context)
        output = self.parameterAsFileOutput(parameters, self.OUTPUT, context)
        if not output.endswith(".classes.json"):
            output = output[:-len(".json")] if output.endswith(".json") else output
            output += ".classes.json"
        client, settings = engine_client(self, parameters, context)
        try:
            labels = labelled_polygons(source, self.parameterAsString(parameters, self.FIELD, context))
            request = TeachRequest(raster=RasterSnapshot.of(layer), classes=classes, labels=labels,
                                   labels_crs=crs_text(source.sourceCrs()),
                                   gsd=self.parameterAsDouble(parameters, self.GSD, context) or None,
                                   model=settings["model"] or None, **raster_choices(self, parameters, context))
            Path(output).parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix=".farslip-teach-", dir=str(Path(output).parent)) as scratch:
                taught = run_teach(client, request, scratch, _progress(feedback), feedback.isCanceled)
                os.replace(Path(scratch) / TAUGHT_FILE, output)
        except EngineError as exc:
            raise failure(exc) from None
        remember(output)  # listed beside Taught in the dock from now on
        feedback.pushInfo(f"{taught.describe()}; segment with classes @job:{taught.job_id} or @{output}")
        return {self.OUTPUT: output, "JOB_ID": taught.job_id, "ALPHA": taught.alpha}


class CheckAccuracyAlgorithm(QgsProcessingAlgorithm):
    JOB, REFERENCE, FIELD, OUTPUT_FOLDER = "JOB", "REFERENCE", "FIELD", "OUTPUT_FOLDER"

    def name(self) -> str:
        return "check_accuracy"

    def displayName(self) -> str:  # noqa: N802
        return "Check accuracy against reference polygons"

    def shortHelpString(self) -> str:  # noqa: N802
        return ("Compares a segmentation (its engine job id: the JOB_ID output of 'Segment raster by text prompts') "
                "with reference polygons labelled with class names: mIoU, overall accuracy, kappa and per-class "
                "IoU, precision and recall (accuracy.json), the confusion matrix (confusion.csv) and its picture "
                "(confusion.png).")

    def createInstance(self):  # noqa: N802
        return CheckAccuracyAlgorithm()

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterString(self.JOB, "Segmentation job id"))
        self.addParameter(QgsProcessingParameterFeatureSource(self.REFERENCE, "Reference polygons",
                                                              [QgsProcessing.SourceType.TypeVectorPolygon]))
        self.addParameter(QgsProcessingParameterField(self.FIELD, "Class field", "class", self.REFERENCE))
        self.addParameter(QgsProcessingParameterFolderDestination(self.OUTPUT_FOLDER, "Output folder"))
        add_engine_parameters(self)
        for key, name in zip(("ACCURACY_JSON", "CONFUSION_CSV", "CONFUSION_PNG"), ACCURACY_FILES):
            self.addOutput(QgsProcessingOutputFile(key, name))
        for key, title in (("MIOU", "mIoU"), ("OVERALL_ACCURACY", "Overall accuracy"), ("KAPPA", "Kappa")):
            self.addOutput(QgsProcessingOutputNumber(key, title))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        job = self.parameterAsString(parameters, self.JOB, context).strip()
        source = self.parameterAsSource(parameters, self.REFERENCE, context)
        folder = self.parameterAsString(parameters, self.OUTPUT_FOLDER, context)
        client, _settings = engine_client(self, parameters, context)
        try:
            reference = labelled_polygons(source, self.parameterAsString(parameters, self.FIELD, context), "reference")
            report, out = run_accuracy(client, job, reference, crs_text(source.sourceCrs()), folder,
                                       _progress(feedback), feedback.isCanceled, fresh=False)  # the chosen one
        except EngineError as exc:
            raise failure(exc) from None
        feedback.pushInfo(report_headline(report))
        outputs = {self.OUTPUT_FOLDER: str(out), "MIOU": report["miou"],
                   "OVERALL_ACCURACY": report["overall_accuracy"], "KAPPA": report["kappa"]}
        for key, name in zip(("ACCURACY_JSON", "CONFUSION_CSV", "CONFUSION_PNG"), ACCURACY_FILES):
            if (out / name).exists():
                outputs[key] = str(out / name)
        return outputs
