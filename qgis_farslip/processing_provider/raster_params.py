"""The bands seen as red, green, blue and the no-data value of the input raster, as Processing parameters: the
same two in every algorithm that reads a raster (segment, teach, grid, search, label regions), as the dock's
Segment tab has them for all of its runs."""

from __future__ import annotations

from qgis.core import QgsProcessingException, QgsProcessingParameterBand, QgsProcessingParameterNumber

from qgis_farslip.raster_snapshot import user_nodata

BANDS, NODATA = "BANDS", "NODATA"


def add_raster_choice_parameters(algorithm, input_name: str = "INPUT") -> None:
    algorithm.addParameter(QgsProcessingParameterBand(
        BANDS, "Bands seen as red, green, blue (empty: those marked so, else 1, 2, 3; a grey raster: its band three "
        "times)", parentLayerParameterName=input_name, optional=True, allowMultiple=True))
    algorithm.addParameter(QgsProcessingParameterNumber(
        NODATA, "No-data value (empty: as the raster declares, and the layer's own additional no data value in QGIS)",
        QgsProcessingParameterNumber.Type.Double, optional=True))


def raster_choices(algorithm, parameters, context, input_name: str = "INPUT") -> dict:
    """{"bands": [r, g, b] or None, "nodata": value or None} as chosen (no data: else the input layer's own
    in QGIS, an "Additional no data value"); three bands or none."""
    bands = algorithm.parameterAsInts(parameters, BANDS, context) or None
    if bands is not None and len(bands) != 3:
        raise QgsProcessingException(f"choose three bands (red, green, blue), or none; {len(bands)} chosen")
    nodata = (algorithm.parameterAsDouble(parameters, NODATA, context)
              if parameters.get(NODATA) not in (None, "") else None)
    layer = algorithm.parameterAsRasterLayer(parameters, input_name, context)
    if nodata is None and layer is not None:
        nodata = user_nodata(layer.dataProvider())
    return {"bands": bands, "nodata": nodata}
