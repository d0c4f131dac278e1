"""The folder policy reaches into GDAL: a VRT or an XML recipe cannot make the service read files
outside the served folders or make requests for a client; VRTs inside the policy still work."""

from __future__ import annotations

import pytest

from tests.engine.api_helpers import AUTH
from tests.engine.rasters import scene, write_raster


def _vrt(path, source: str, relative: bool = False, size=(64, 64)):
    """A one-band-per-colour VRT reading `source` (as written, relative to the VRT when `relative`)."""
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{b}"><SimpleSource>'
        f'<SourceFilename relativeToVRT="{int(relative)}">{source}</SourceFilename>'
        f'<SourceBand>{b}</SourceBand></SimpleSource></VRTRasterBand>' for b in (1, 2, 3))
    path.write_text(f'<VRTDataset rasterXSize="{size[1]}" rasterYSize="{size[0]}">{bands}</VRTDataset>')
    return path


def _segment(client, path):
    return client.post("/v1/jobs/segment", headers=AUTH, json={"input": {"path": str(path)}, "classes": ["water"]})


def test_a_vrt_reading_a_file_outside_the_served_folder_is_refused(client, root, tmp_path_factory):
    outside = write_raster(tmp_path_factory.mktemp("elsewhere") / "secret.tif", scene(64, 64)[0])
    for vrt in (_vrt(root / "absolute.vrt", str(outside)),
                _vrt(root / "relative.vrt", f"../{outside.parent.name}/{outside.name}", relative=True),
                _vrt(root / "passwd.vrt", "/etc/passwd")):
        response = _segment(client, vrt)
        assert response.status_code == 403, (vrt.name, response.text)
        assert vrt.name in response.json()["detail"] and "outside" in response.json()["detail"]


def test_a_vrt_inside_the_served_folder_is_served(client, root):
    (root / "tiles").mkdir()
    write_raster(root / "tiles" / "a.tif", scene(64, 64)[0])
    inner = _vrt(root / "inner.vrt", "tiles/a.tif", relative=True)
    outer = _vrt(root / "outer.vrt", str(inner))  # nested, both inside the policy
    for vrt in (inner, outer):
        assert _segment(client, vrt).status_code == 202, vrt.name


def test_no_request_is_made_for_a_url_in_a_vrt_or_a_wms_file(client, root, listener):
    url, hits = listener
    for vrt in (_vrt(root / "curl.vrt", f"/vsicurl/{url}/a.tif"), _vrt(root / "http.vrt", f"{url}/a.tif")):
        response = _segment(client, vrt)
        assert response.status_code == 400 and "URL" in response.json()["detail"], response.text
    wms = root / "service.xml"
    wms.write_text(f"<GDAL_WMS><Service name=\"TMS\"><ServerUrl>{url}/${{z}}/${{x}}/${{y}}.png</ServerUrl>"
                   f"</Service><DataWindow><UpperLeftX>-20037508.34</UpperLeftX><UpperLeftY>20037508.34"
                   f"</UpperLeftY><LowerRightX>20037508.34</LowerRightX><LowerRightY>-20037508.34</LowerRightY>"
                   f"<TileLevel>1</TileLevel><TileCountX>1</TileCountX><TileCountY>1</TileCountY></DataWindow>"
                   f"<BandsCount>3</BandsCount></GDAL_WMS>")
    response = _segment(client, wms)
    assert response.status_code == 400 and "not a raster this engine serves" in response.json()["detail"]
    assert hits == []


def test_an_uploaded_vrt_is_refused(client, tmp_path_factory):
    outside = write_raster(tmp_path_factory.mktemp("elsewhere") / "secret.tif", scene(64, 64)[0])
    body = _vrt(tmp_path_factory.mktemp("client") / "up.vrt", str(outside)).read_bytes()
    response = client.post("/v1/uploads", headers=AUTH, content=body)
    assert response.status_code == 400 and "not a raster this engine serves" in response.json()["detail"]


def test_an_input_replaced_by_a_recipe_after_submit_is_refused_when_the_job_starts(client, root, tmp_path_factory):
    """The submit check passed on a GeoTIFF; by the time the job starts (queued behind another) the
    file is a VRT reading a file outside the served folder: the job fails, naming the change, and
    nothing outside is read."""
    from tests.engine.api_helpers import wait_for

    ahead_src = write_raster(root / "big.tif", scene(2000, 2000)[0])
    ahead = client.post("/v1/jobs/segment", headers=AUTH, json={"input": {"path": str(ahead_src)},
                                                               "classes": ["water"], "block": 256}).json()["id"]
    target = write_raster(root / "swapped.tif", scene(64, 64)[0])
    submitted = _segment(client, target)
    assert submitted.status_code == 202, submitted.text
    outside = write_raster(tmp_path_factory.mktemp("elsewhere") / "secret.tif", scene(64, 64)[0])
    _vrt(root / "swap.vrt", str(outside)).replace(target)  # replaced in one step, as an attacker would
    job = submitted.json()["id"]
    assert client.get(f"/v1/jobs/{job}", headers=AUTH).json()["state"] == "queued"  # it has not started yet
    client.post(f"/v1/jobs/{ahead}/cancel", headers=AUTH)
    status = wait_for(client, job)
    assert status["state"] == "failed", status
    assert "changed after the job was submitted" in status["message"] and "outside" in status["message"]


def test_a_job_opens_rasters_only_with_the_drivers_its_check_allowed(root, tmp_path_factory):
    """Should a file change between the check at the start and the opening, the restricted open
    still refuses a format the check did not allow (here a VRT where a GeoTIFF was checked)."""
    from engine.errors import InputError
    from engine.geo.opening import only_drivers
    from engine.geo.source import RasterSource
    from engine.server.raster_policy import SELF_CONTAINED

    inner = write_raster(root / "inner.tif", scene(64, 64)[0])
    vrt = _vrt(root / "recipe.vrt", str(inner))
    with only_drivers(SELF_CONTAINED):
        with pytest.raises(InputError, match="not a raster of a format this engine serves"):
            RasterSource(vrt)
        with RasterSource(inner) as source:  # a served format opens as before
            assert source.width == 64
    with RasterSource(vrt) as source:  # the command line opens any raster GDAL opens
        assert source.width == 64
