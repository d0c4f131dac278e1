"""Registers the FarSLIP algorithms with QGIS Processing."""

from __future__ import annotations

from qgis.core import QgsProcessingProvider

from qgis_farslip.processing_provider.scenes import ClassifyGridAlgorithm, LabelRegionsAlgorithm, SearchAlgorithm
from qgis_farslip.processing_provider.segment import SegmentRasterAlgorithm
from qgis_farslip.processing_provider.teach import CheckAccuracyAlgorithm, TeachClassesAlgorithm


class FarSLIPProvider(QgsProcessingProvider):
    def id(self) -> str:
        return "farslip"

    def name(self) -> str:
        return "FarSLIP"

    def longName(self) -> str:  # noqa: N802
        return "FarSLIP open-vocabulary segmentation"

    def loadAlgorithms(self) -> None:  # noqa: N802
        for algorithm in (SegmentRasterAlgorithm(), ClassifyGridAlgorithm(), SearchAlgorithm(), LabelRegionsAlgorithm(),
                          TeachClassesAlgorithm(), CheckAccuracyAlgorithm()):
            self.addAlgorithm(algorithm)
