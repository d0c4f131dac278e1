"""Processing algorithms "Classify scenes on a grid", "Search imagery by text" and "Label regions"."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from qgis.core import (QgsFeature, QgsFeatureSink, QgsFields, QgsProcessing, QgsProcessingAlgorithm,
                       QgsProcessingException, QgsProcessingOutputRasterLayer, QgsProcessingOutputVectorLayer,
                       QgsProcessingParameterExtent, QgsProcessingParameterFeatureSink,
                       QgsProcessingParameterFeatureSource, QgsProcessingParameterFolderDestination,
                       QgsProcessingParameterNumber, QgsProcessingParameterRasterLayer, QgsProcessingParameterString)

from qgis_farslip.client import EngineError
from qgis_farslip.fields import real_field, text_field
from qgis_farslip.jobs import (DEFAULT_GSD_M, area_payload, clip_extent, engine_reads, forget_upload, render_fitting,
                               run_job)
from qgis_farslip.labelling import polygon_ring
from qgis_farslip.processing_provider import styles
from qgis_farslip.processing_provider.engine_params import add_engine_parameters, engine_client, failure
from qgis_farslip.processing_provider.raster_params import add_raster_choice_parameters, raster_choices
from qgis_farslip.processing_provider.segment import TAUGHT_HELP, parse_classes
from qgis_farslip.raster_snapshot import RasterSnapshot, crs_text
from qgis_farslip.taught_refs import classes_value, with_taught


class _EngineJobAlgorithm(QgsProcessingAlgorithm):
    """Shared plumbing: input raster + optional extent → an engine job → files in a fresh folder."""

    kind = ""

    def _run(self, parameters, context, feedback, extra: dict, taught: str | None = None) -> tuple[dict, Path]:
        layer = self.parameterAsRasterLayer(parameters, "INPUT", context)
        if layer is None:
            raise QgsProcessingException("no input raster layer")
        extent = self.parameterAsExtent(parameters, "EXTENT", context, layer.crs()) if parameters.get("EXTENT") else None
        folder = Path(self.parameterAsString(parameters, "OUTPUT_FOLDER", context)) / time.strftime(
            f"farslip_{self.kind}_%Y%m%d_%H%M%S")
        client, settings = engine_client(self, parameters, context)
        try:
            with tempfile.TemporaryDirectory(prefix="farslip-qgis-") as scratch:
                payload = area_payload(client, RasterSnapshot.of(layer), extent, layer.crs(), extra.get("gsd"), scratch)
            if settings["model"]:
                payload["model"] = settings["model"]
            payload.update({k: v for k, v in raster_choices(self, parameters, context).items() if v is not None})
            payload.update(extra)
            try:
                return with_taught(client, taught, payload, lambda body: run_job(
                    client, self.kind, body, str(folder), lambda p, m: feedback.setProgress(100 * p),
                    feedback.isCanceled))
            finally:
                forget_upload(client, payload)
        except EngineError as exc:
            raise failure(exc) from None

    def _common_parameters(self) -> None:
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Input raster"))
        self.addParameter(QgsProcessingParameterExtent("EXTENT", "Extent (empty: the whole layer)", optional=True))
        add_raster_choice_parameters(self)

    def _folder_parameter(self) -> None:
        self.addParameter(QgsProcessingParameterFolderDestination("OUTPUT_FOLDER", "Output folder"))
        add_engine_parameters(self)


class ClassifyGridAlgorithm(_EngineJobAlgorithm):
    kind = "grid"

    def name(self):
        return "classify_grid"

    def displayName(self):  # noqa: N802
        return "Classify scenes on a grid"

    def shortHelpString(self):  # noqa: N802
        return ("Zero-shot scene classification of square cells: a polygon grid with the best class and its score. "
                + TAUGHT_HELP)

    def createInstance(self):  # noqa: N802
        return ClassifyGridAlgorithm()

    def initAlgorithm(self, config=None):  # noqa: N802
        self._common_parameters()
        self.addParameter(QgsProcessingParameterString("CLASSES", "Scene classes (one per line)", multiLine=True,
                                                       defaultValue="residential area\nindustrial area\nforest\nfarmland"))
        self.addParameter(QgsProcessingParameterNumber("CELL", "Cell size (m)", QgsProcessingParameterNumber.Type.Double,
                                                       100.0, minValue=1.0, maxValue=100_000.0))
        self._folder_parameter()
        self.addOutput(QgsProcessingOutputVectorLayer("GRID", "Grid", QgsProcessing.SourceType.TypeVectorPolygon))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        classes, taught = parse_classes(self.parameterAsString(parameters, "CLASSES", context))
        summary, folder = self._run(parameters, context, feedback,
                                    {"classes": classes, "cell_m": self.parameterAsDouble(parameters, "CELL", context)},
                                    taught)
        grid = str(folder / summary["files"]["grid"])
        layer = self.parameterAsRasterLayer(parameters, "INPUT", context)
        styles.load_styled(context, grid, f"Scene grid · {layer.name()} {time.strftime('%H:%M:%S')}", "GRID",
                           styles.categorized(summary["classes"], "grid"))
        return {"GRID": grid, "OUTPUT_FOLDER": str(folder)}


class SearchAlgorithm(_EngineJobAlgorithm):
    kind = "search"

    def name(self):
        return "search"

    def displayName(self):  # noqa: N802
        return "Search imagery by text"

    def shortHelpString(self):  # noqa: N802
        return "A free-text query → a similarity heat map and the top-k matching boxes."

    def createInstance(self):  # noqa: N802
        return SearchAlgorithm()

    def initAlgorithm(self, config=None):  # noqa: N802
        self._common_parameters()
        self.addParameter(QgsProcessingParameterString("QUERY", "Query", defaultValue="a swimming pool next to a house"))
        self.addParameter(QgsProcessingParameterNumber("TOP_K", "Number of boxes", QgsProcessingParameterNumber.Type.Integer,
                                                       10, minValue=1, maxValue=1000))
        self._folder_parameter()
        self.addOutput(QgsProcessingOutputRasterLayer("HEATMAP", "Heat map"))
        self.addOutput(QgsProcessingOutputVectorLayer("BOXES", "Boxes", QgsProcessing.SourceType.TypeVectorPolygon))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        query = self.parameterAsString(parameters, "QUERY", context).strip()
        if not query:
            raise QgsProcessingException("type a query")
        summary, folder = self._run(parameters, context, feedback,
                                    {"query": query, "top_k": self.parameterAsInt(parameters, "TOP_K", context)})
        outputs = {"OUTPUT_FOLDER": str(folder), "BOXES": str(folder / summary["files"]["boxes"])}
        if "heatmap" in summary["files"]:
            outputs["HEATMAP"] = str(folder / summary["files"]["heatmap"])
        for key, name, style in (("HEATMAP", "Heat map", styles.heatmap), ("BOXES", "Search boxes", styles.boxes)):
            if key in outputs:
                styles.load_styled(context, outputs[key], f"{name} · “{query}” {time.strftime('%H:%M:%S')}", key, style)
        return outputs


class LabelRegionsAlgorithm(QgsProcessingAlgorithm):
    def name(self):
        return "label_regions"

    def displayName(self):  # noqa: N802
        return "Label regions"

    def shortHelpString(self):  # noqa: N802
        return ("Ranks the candidate classes for every polygon of a layer (each cropped and encoded on its own) "
                "and writes the best class and its probability, and the share of the polygon's pixels that hold "
                "data (farslip_valid_fraction): a polygon under half valid gets no class (NULL). " + TAUGHT_HELP)

    def createInstance(self):  # noqa: N802
        return LabelRegionsAlgorithm()

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Input raster"))
        add_raster_choice_parameters(self)
        self.addParameter(QgsProcessingParameterFeatureSource("REGIONS", "Regions", [QgsProcessing.SourceType.TypeVectorPolygon]))
        self.addParameter(QgsProcessingParameterString("CLASSES", "Candidate classes (one per line)", multiLine=True,
                                                       defaultValue="car\ntruck\nship\nbuilding"))
        self.addParameter(QgsProcessingParameterFeatureSink("OUTPUT", "Labelled regions"))
        add_engine_parameters(self)

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        layer = self.parameterAsRasterLayer(parameters, "INPUT", context)
        source = self.parameterAsSource(parameters, "REGIONS", context)
        classes, taught = parse_classes(self.parameterAsString(parameters, "CLASSES", context))
        features = list(source.getFeatures())
        if not features:
            raise QgsProcessingException("the regions layer has no features")
        fields = QgsFields(source.fields())
        fields.append(text_field("farslip_class"))
        fields.append(real_field("farslip_score"))
        fields.append(real_field("farslip_valid_fraction"))
        sink, dest = self.parameterAsSink(parameters, "OUTPUT", context, fields, source.wkbType(), source.sourceCrs())
        client, settings = engine_client(self, parameters, context)
        # a feature without a polygon gets no class; a multipart one is labelled by its largest part
        shaped = [f for f in features if not f.geometry().isNull() and not f.geometry().isEmpty()]
        regions = [{"polygon": polygon_ring(f.geometry())} for f in shaped]
        if not regions:
            raise QgsProcessingException("no region has a polygon")
        raster = RasterSnapshot.of(layer)
        try:
            # a file the engine reads is read whole; else the regions' area is rendered and sent — coarser than
            # the working GSD where regions far apart make it too large to render in one go
            area, gsd = None, None
            if engine_reads(client, raster) is None:
                area = shaped[0].geometry().boundingBox()
                for f in shaped[1:]:
                    area.combineExtentWith(f.geometry().boundingBox())
                gsd = render_fitting(raster, clip_extent(raster, area, source.sourceCrs()), None)
                if gsd is not None and gsd > DEFAULT_GSD_M:
                    feedback.pushWarning(f"the regions lie far apart: their area is sent at {gsd:.2f} m per pixel "
                                         f"(label regions close together, or use an engine that reads the file, for "
                                         f"{DEFAULT_GSD_M} m)")
            with tempfile.TemporaryDirectory(prefix="farslip-qgis-") as scratch:
                payload = area_payload(client, raster, area, source.sourceCrs(), gsd, scratch)
            for key in ("bbox", "bbox_crs"):  # a labelling request has regions instead
                payload.pop(key, None)
            payload.update(classes=classes, regions=regions)
            if crs_text(source.sourceCrs()) is not None:
                payload["crs"] = crs_text(source.sourceCrs())
            if settings["model"]:
                payload["model"] = settings["model"]
            payload.update({k: v for k, v in raster_choices(self, parameters, context).items() if v is not None})

            def label_all(body: dict) -> list[dict]:
                labels = []
                for start in range(0, len(regions), 256):
                    if feedback.isCanceled():
                        raise QgsProcessingException("cancelled: nothing was written")
                    labels += client.label(dict(body, regions=regions[start:start + 256]))["regions"]
                    feedback.setProgress(100 * len(labels) / len(regions))
                return labels

            try:
                labels = with_taught(client, taught, payload, label_all)
            finally:
                forget_upload(client, payload)
            if taught:  # the legend: the taught file's classes, as the engine reads them
                classes = classes_value(client, taught)
        except EngineError as exc:
            raise failure(exc) from None
        by_id = {f.id(): label for f, label in zip(shaped, labels)}
        for feature in features:
            label = by_id.get(feature.id(), {})
            out = QgsFeature(fields)
            out.setGeometry(feature.geometry())
            # a region mostly on no data: no class, no score (NULL); an older engine sends no valid_fraction
            out.setAttributes(feature.attributes() + [label.get("best"), label.get("score"),
                                                      label.get("valid_fraction")])
            sink.addFeature(out, QgsFeatureSink.Flag.FastInsert)
        without = sum(label.get("best") is None for label in labels)
        if without:
            feedback.pushWarning(f"{without} of {len(labels)} regions are mostly no data (under half of their pixels "
                                 "hold data): no class (farslip_class NULL)")
        if len(shaped) < len(features):
            feedback.pushWarning(f"{len(features) - len(shaped)} features have no polygon: no class "
                                 "(farslip_class NULL)")
        if context.willLoadLayerOnCompletion(dest):
            try:
                colours = [{"name": c["name"], "colour": c["colour"]} for c in client.prompts(classes)]
            except EngineError:
                colours = []
            if colours:
                post = styles._Style(styles.categorized_memory(colours, "farslip_class"))
                styles._LIVE.append(post)
                context.layerToLoadOnCompletionDetails(dest).setPostProcessor(post)
        return {"OUTPUT": dest}
