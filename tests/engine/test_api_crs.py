"""A CRS a client names is read as an authority code, a WKT or a PROJ string only (`engine.geo.crs_text`):
a URL or a file name in any CRS field is a 400 naming the field, and the engine makes no request and
reads no file for it; the forms QGIS sends still work, in the service and on the command line."""

from __future__ import annotations

import os

import pytest
import rasterio
from pyproj import CRS

from engine.cli import main
from tests.engine.api_helpers import AUTH, wait_for
from tests.engine.conftest import TINY
from tests.engine.rasters import scene, write_raster

SQUARE = "POLYGON((0 0, 1 0, 1 1, 0 1, 0 0))"


@pytest.fixture
def src(root):
    return write_raster(root / "ortho.tif", scene(96, 96)[0])


@pytest.fixture
def segmentation(client, src) -> str:
    created = client.post("/v1/jobs/segment", headers=AUTH, json={"input": {"path": str(src)}, "classes": "a; b"})
    return wait_for(client, created.json()["id"])["id"]


def _requests(src, segmentation, crs: str) -> list[tuple[str, dict, str]]:
    """(url, body, field) of every request with a CRS field, that field set to `crs`."""
    image = {"input": {"path": str(src)}}
    box = [500010.0, 5199950.0, 500040.0, 5199990.0]
    return [
        ("/v1/jobs/segment", {**image, "classes": "a", "bbox": box, "bbox_crs": crs}, "bbox_crs"),
        ("/v1/jobs/segment", {**image, "classes": "a", "mask_wkt": SQUARE, "mask_crs": crs}, "mask_crs"),
        ("/v1/jobs/grid", {**image, "classes": "a", "cell_m": 10, "bbox": box, "bbox_crs": crs}, "bbox_crs"),
        ("/v1/jobs/search", {**image, "query": "a pool", "bbox": box, "bbox_crs": crs}, "bbox_crs"),
        ("/v1/jobs/teach", {**image, "classes": "a", "labels": [{"wkt": SQUARE, "label": "a"}], "labels_crs": crs},
         "labels_crs"),
        ("/v1/jobs/accuracy", {"job": segmentation, "reference": [{"wkt": SQUARE, "label": "a"}],
                               "reference_crs": crs}, "reference_crs"),
        ("/v1/regions/label", {**image, "classes": "a; b", "regions": [{"bbox": box}], "crs": crs}, "crs"),
    ]


def test_a_url_in_any_crs_field_is_a_400_naming_it_and_no_request_is_made(client, src, segmentation, listener):
    url, hits = listener
    for crs in (f"{url}/crs.wkt", f"/vsicurl/{url}/crs.wkt", f"@{url}/crs.wkt"):
        for path, body, field in _requests(src, segmentation, crs):
            got = client.post(path, headers=AUTH, json=body)
            assert got.status_code == 400, (path, field, got.text)
            detail = got.json()["detail"]
            assert field in detail and "reads no URL or file" in detail, (path, detail)
    assert hits == []
    assert client.get("/v1/jobs", headers=AUTH).json()[0]["id"] == segmentation  # no job was made


def test_a_crs_file_outside_the_served_folders_is_not_read(client, src, segmentation, tmp_path_factory):
    with rasterio.open(src) as ds:
        wkt = CRS.from_user_input(ds.crs).to_wkt()
    secret = tmp_path_factory.mktemp("elsewhere") / "secret.prj"
    secret.write_text(wkt)
    for crs in (str(secret), f"file://{secret}", f"@{secret}"):
        for path, body, field in _requests(src, segmentation, crs):
            got = client.post(path, headers=AUTH, json=body)
            assert got.status_code == 400 and field in got.json()["detail"], (path, got.text)
    body = _requests(src, segmentation, wkt)[0][1]  # the file's text itself is a CRS the engine takes
    assert client.post("/v1/jobs/segment", headers=AUTH, json=body).status_code == 202


@pytest.mark.parametrize("crs", ["+proj=utm +zone=33 +datum=WGS84 +nadgrids=/etc/passwd +no_defs",
                                 "+init=epsg:32633", "+proj=utm +zone=33 +init=/etc/passwd"])
def test_a_proj_string_naming_a_file_is_refused(client, src, segmentation, crs):
    got = client.post("/v1/jobs/accuracy", headers=AUTH, json=_requests(src, segmentation, crs)[5][1])
    assert got.status_code == 400 and "reference_crs" in got.json()["detail"], got.text


def test_an_unknown_reference_crs_is_a_400_at_submit(client, src, segmentation):
    got = client.post("/v1/jobs/accuracy", headers=AUTH, json=_requests(src, segmentation, "EPSG:999999")[5][1])
    assert got.status_code == 400, got.text
    assert got.json()["detail"] == "reference_crs: unknown CRS 'EPSG:999999'"


def test_epsg_wkt_and_proj_strings_are_read(client, src, segmentation):
    with rasterio.open(src) as ds:
        left, bottom, right, top = ds.bounds
        utm = CRS.from_user_input(ds.crs)
    square = f"POLYGON(({left} {bottom}, {right} {bottom}, {right} {top}, {left} {top}, {left} {bottom}))"
    pixels = set()
    for crs in ("EPSG:32633", utm.to_wkt(), utm.to_wkt("WKT1_GDAL"), utm.to_proj4(), "urn:ogc:def:crs:EPSG::32633"):
        created = client.post("/v1/jobs/accuracy", headers=AUTH, json={
            "job": segmentation, "reference": [{"wkt": square, "label": "a"}], "reference_crs": crs})
        assert created.status_code == 202, (crs, created.text)
        status = wait_for(client, created.json()["id"])
        assert status["state"] == "done", (crs, status)
        pixels.add(status["summary"]["labelled_pixels"])
    assert pixels == {96 * 96}


def test_the_command_line_reads_crs_text_the_same_way(tmp_path, capfd, listener, src):
    from tests.engine.api_helpers import write_checkpoint

    url, hits = listener
    checkpoint = write_checkpoint(tmp_path)
    capfd.readouterr()
    code = main(["segment", str(src), "--classes", "a; b", "-o", str(tmp_path / "out"), "--model", str(checkpoint),
                 "--arch", TINY, "-q", "--bbox", "1,2,3,4", "--bbox-crs", f"{url}/crs.wkt"])
    lines = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("farslip: error: --bbox-crs: "), lines
    assert hits == [] and not (tmp_path / "out").exists()


def test_proj_has_no_network_in_the_service(client):
    from pyproj import network

    assert os.environ["PROJ_NETWORK"] == "OFF" and not network.is_network_enabled()
