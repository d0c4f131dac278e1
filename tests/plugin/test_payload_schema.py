"""The plugin's segmentation payloads fit the engine's job schema (exported from `engine.job`, kept in
sync by tests/engine/test_job_settings.py), so a payload the plugin builds is never refused as a
malformed body — checked here in QGIS's own Python, which cannot import the engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SCHEMA = json.loads((Path(__file__).with_name("segment_job_schema.json")).read_text(encoding="utf-8"))


@pytest.fixture
def layer(folder, qgis_app):
    from qgis.core import QgsRasterLayer

    raster = QgsRasterLayer(str(folder / "small.tif"), "small")
    assert raster.isValid()
    return raster


def _requests(layer):
    from qgis.core import QgsRectangle

    from qgis_farslip.jobs import SegmentationRequest
    from qgis_farslip.raster_snapshot import RasterSnapshot

    e = layer.extent()
    inner = QgsRectangle(e.xMinimum() + 5, e.yMinimum() + 5, e.xMaximum() - 5, e.yMaximum() - 5)
    yield SegmentationRequest(raster=RasterSnapshot.of(layer), classes=["building, roof", "water"])
    yield SegmentationRequest(raster=RasterSnapshot.of(layer), classes=["tree"], extent=inner,
                              extent_crs=layer.crs(), gsd=0.7, model="farslip2-vit-b-16", threshold=0.35,
                              scores=True, min_area=4.0, mask_wkt=inner.asWktPolygon(), mask_crs="EPSG:32633")


def test_every_payload_the_plugin_builds_fits_the_job_schema(layer, engine):
    import jsonschema

    from qgis_farslip.client import EngineClient
    from qgis_farslip.jobs import build_payload

    client = EngineClient(engine.url, engine.token)  # a local engine, which reads a GeoTIFF from its file
    for request in _requests(layer):
        payload = build_payload(client, request, "/tmp")
        jsonschema.validate(payload, SCHEMA)  # raises, naming the field, when the plugin and engine disagree


def test_the_schema_refuses_what_the_engine_refuses():
    import jsonschema

    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"input": {"path": "/a.tif"}, "classes": "a", "gsd": -1}, SCHEMA)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"input": {"path": "/a.tif"}, "classes": "a", "colour": "red"}, SCHEMA)
