"""The HTTP API: jobs with progress, cancel and files; uploads; auth; paths; limits; bad input."""

from __future__ import annotations

import logging
import stat

import pytest
import rasterio
from fastapi.testclient import TestClient

from engine.server.auth import load_or_create_token
from tests.engine.api_helpers import AUTH, make_app, wait_for
from tests.engine.rasters import scene, write_raster

CLASSES = ["water,river", "grass", "building,roof", "road"]


def _segment(client, path, **extra):
    return client.post("/v1/jobs/segment", headers=AUTH, json={"input": {"path": str(path)}, "classes": CLASSES, **extra})


def test_health_is_open_everything_else_needs_the_token(client):
    health = client.get("/v1/health")
    assert health.status_code == 200 and health.json()["device"] == "cpu"
    for method, url in (("get", "/v1/models"), ("get", "/v1/jobs"), ("post", "/v1/jobs/segment"),
                        ("post", "/v1/uploads"), ("get", "/v1/jobs/0123/files/x")):
        assert getattr(client, method)(url).status_code == 401
        assert getattr(client, method)(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/v1/models", headers=AUTH).status_code == 200


def test_token_file_is_private(tmp_path):
    path = tmp_path / "cfg" / "token"
    token = load_or_create_token(path)
    assert len(token) >= 32 and load_or_create_token(path) == token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_a_segmentation_job_runs_to_done_and_serves_its_files(client, root):
    src = write_raster(root / "ortho.tif", scene(260, 300)[0])
    created = _segment(client, src, scores=True)
    assert created.status_code == 202, created.text
    status = wait_for(client, created.json()["id"])
    assert status["state"] == "done" and status["progress"] == 1.0, status
    assert set(status["files"]) == {"result_classes.tif", "result_scores.tif", "result_polygons.gpkg",
                                    "result_summary.json"}
    assert [c["name"] for c in status["summary"]["classes"]] == ["water", "grass", "building", "road"]
    got = client.get(f"/v1/jobs/{status['id']}/files/result_classes.tif", headers=AUTH)
    assert got.status_code == 200
    with rasterio.MemoryFile(got.content) as mem, mem.open() as ds, rasterio.open(src) as s:
        assert ds.crs == s.crs and ds.transform.almost_equals(s.transform)
    assert client.get(f"/v1/jobs/{status['id']}/files/../engine.sqlite", headers=AUTH).status_code == 404
    assert client.get(f"/v1/jobs/{status['id']}/files/other.tif", headers=AUTH).status_code == 404


def test_uploaded_geotiff_is_segmented(client, root):
    src = write_raster(root / "up.tif", scene(200, 220)[0])
    up = client.post("/v1/uploads", headers=AUTH, content=src.read_bytes())
    assert up.status_code == 201, up.text
    assert up.json()["width"] == 220 and up.json()["crs"] == "EPSG:32633"
    created = client.post("/v1/jobs/segment", headers=AUTH,
                          json={"input": {"upload_id": up.json()["upload_id"]}, "classes": "water; grass"})
    assert wait_for(client, created.json()["id"])["state"] == "done"


@pytest.mark.parametrize("body, code, message", [
    (b"II*\x00garbage that is no tiff", 400, "not a raster"),
    (b"", 400, "empty upload"),
])
def test_bad_uploads_are_refused(client, root, body, code, message):
    got = client.post("/v1/uploads", headers=AUTH, content=body)
    assert got.status_code == code and message in got.json()["detail"]
    assert not [p for p in (root / "engine-data" / "uploads").iterdir()]


def test_uploads_over_the_cap_are_refused(root):
    with TestClient(make_app(root, max_upload_mb=0.01)) as c:
        got = c.post("/v1/uploads", headers=AUTH, content=b"x" * 20000)
        assert got.status_code == 413
        chunks = (b"x" * 4096 for _ in range(5))  # no content-length: streamed and counted
        assert c.post("/v1/uploads", headers=AUTH, content=chunks).status_code == 413
    assert not list((root / "engine-data" / "uploads").iterdir())


def test_paths_outside_the_allowed_roots_are_refused(client, root, tmp_path_factory):
    outside_dir = tmp_path_factory.mktemp("outside")
    outside = write_raster(outside_dir / "secret.tif", scene(64, 64)[0])
    assert _segment(client, outside).status_code == 403
    assert _segment(client, root / ".." / outside_dir.name / "secret.tif").status_code == 403
    link = root / "link.tif"
    link.symlink_to(outside)
    assert _segment(client, link).status_code == 403
    assert _segment(client, "relative/path.tif").status_code == 400
    assert _segment(client, root / "missing.tif").status_code == 404


def test_remote_mode_serves_no_paths_without_allow_root(root):
    with TestClient(make_app(root, host="0.0.0.0", allow_roots=[])) as c:
        src = write_raster(root / "x.tif", scene(64, 64)[0])
        got = _segment(c, src)
        assert got.status_code == 403 and "upload" in got.json()["detail"]


# A body that does not fit the published schema is a 422; one that fits it but cannot be run (the class
# list as the parser reads it, the raster it names, the engine's files) is a 400.
@pytest.mark.parametrize("extra, code, message", [
    ({"classes": []}, 422, "classes"),
    ({"classes": " ;, ; "}, 422, "classes"),
    ({"classes": [f"class {i}" for i in range(1000)]}, 400, "at most 254"),
    ({"classes": "water; Water"}, 400, "appears in class 1 and class 2"),
    ({"window": [0, 0, 0, 10]}, 422, "window.2: Input should be greater than or equal to 1"),
    ({"window": [0, 0, 10, 10], "bbox": [0, 0, 1, 1]}, 400, "either a window or a bbox"),
    ({"bbox": [5, 0, 1, 1]}, 400, "max > min"),
    ({"mask_crs": "EPSG:4326"}, 400, "mask_crs given without mask_wkt"),
    ({"window": [500, 500, 10, 10]}, 400, "outside the raster"),
    ({"bbox": [0, 0, 1, 1]}, 400, "bbox lies outside"),
    ({"model": "farslip7"}, 400, "unknown model"),
    ({"bands": [1, 2, 9]}, 400, "band 9 does not exist"),
    ({"threshold": 3}, 422, "threshold"),
    ({"unknown_field": 1}, 422, "unknown_field"),
])
def test_bad_requests_get_a_clear_4xx(client, root, extra, code, message):
    src = write_raster(root / "in.tif", scene(100, 100)[0])
    body = {"input": {"path": str(src)}, "classes": CLASSES, **extra}
    got = client.post("/v1/jobs/segment", headers=AUTH, json=body)
    assert got.status_code == code, got.text
    assert message in got.json()["detail"]


def test_malformed_json_and_huge_bodies(client):
    got = client.post("/v1/jobs/segment", headers={**AUTH, "content-type": "application/json"}, content=b"{nope")
    assert got.status_code == 422
    big = {"input": {"path": "/x"}, "classes": ["a" * 100] * 20000}
    assert client.post("/v1/jobs/segment", headers=AUTH, json=big).status_code == 413


def test_a_corrupt_tiff_path_gives_400(client, root):
    bad = root / "corrupt.tif"
    good = write_raster(root / "good.tif", scene(64, 64)[0])
    bad.write_bytes(good.read_bytes()[:300])
    got = _segment(client, bad)
    assert got.status_code == 400


def test_cancel_stops_a_running_job_and_nothing_is_served(client, root):
    src = write_raster(root / "big.tif", scene(1400, 1400)[0])
    job_id = _segment(client, src, block=256).json()["id"]
    status = wait_for(client, job_id, states=("running",))
    while status["progress"] == 0:  # the next change, by long-poll
        status = client.get(f"/v1/jobs/{job_id}", headers=AUTH,
                            params={"wait": 30, "since": status["revision"]}).json()
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=AUTH).status_code == 200
    status = wait_for(client, job_id, timeout=30)
    assert status["state"] == "cancelled" and status["files"] == []
    assert client.get(f"/v1/jobs/{job_id}/files/result_classes.tif", headers=AUTH).status_code == 409
    out = root / "engine-data" / "jobs" / job_id / "out"
    assert not out.exists() or list(out.iterdir()) == []


def test_a_full_queue_answers_429(root):
    src = write_raster(root / "q.tif", scene(900, 900)[0])
    with TestClient(make_app(root, max_queue=1)) as c:
        codes = [_segment(c, src, block=256).status_code for _ in range(4)]
        assert codes.count(202) >= 1 and 429 in codes and set(codes) <= {202, 429}
        for job in c.get("/v1/jobs", headers=AUTH).json():
            c.post(f"/v1/jobs/{job['id']}/cancel", headers=AUTH)


def test_cors_stays_closed(client):
    got = client.options("/v1/jobs", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in {k.lower() for k in got.headers}
    got = client.get("/v1/health", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in {k.lower() for k in got.headers}


def test_one_log_line_per_request_with_the_job_id(client, root, caplog):
    src = write_raster(root / "log.tif", scene(64, 64)[0])
    with caplog.at_level(logging.INFO, logger="farslip.api"):
        job_id = _segment(client, src).json()["id"]
        client.get(f"/v1/jobs/{job_id}", headers=AUTH)
    lines = [r.getMessage() for r in caplog.records if r.name == "farslip.api" and " ms" in r.getMessage()]
    assert any(line.startswith("POST /v1/jobs/segment 202") and f"job={job_id}" in line for line in lines)
    assert any(line.startswith(f"GET /v1/jobs/{job_id} 200") and f"job={job_id}" in line for line in lines)
    wait_for(client, job_id)


def test_prompts_are_parsed_with_stable_colours(client):
    got = client.post("/v1/prompts", headers=AUTH, json={"classes": "building, roof; water; my odd class"})
    assert got.status_code == 200
    classes = got.json()["classes"]
    assert [c["name"] for c in classes] == ["building", "water", "my odd class"]
    assert classes[1]["colour"] == "#1e64dc"
    again = client.post("/v1/prompts", headers=AUTH, json={"classes": ["my odd class"]}).json()["classes"][0]
    assert again["colour"] == classes[2]["colour"]
    assert client.post("/v1/prompts", headers=AUTH, json={"classes": " ; "}).status_code == 422  # no name in it: the schema refuses it


def test_classes_that_would_look_alike_get_colours_of_their_own(client):
    """'building; house' are two classes: a map where both are the same red cannot be read. Each keeps its
    colour when it is the first of its kind, and the same list always gets the same colours."""
    def colours(classes: str) -> list[tuple[int, ...]]:
        got = client.post("/v1/prompts", headers=AUTH, json={"classes": classes}).json()["classes"]
        return [tuple(int(c["colour"][k:k + 2], 16) for k in (1, 3, 5)) for c in got]

    listed = "building; house; road; street; tree; forest; river; lake; class 5; class 23; township; ship"
    got = colours(listed)
    assert got == colours(listed)
    assert got[0] == colours("building")[0] and got[2] == colours("road")[0]  # the first of each keeps it
    assert colours("township") != colours("ship")  # a keyword counts at the start of a word only
    for i, a in enumerate(got):
        for b in got[:i]:
            assert sum((x - y) ** 2 for x, y in zip(a, b)) >= 75 ** 2, (listed.split("; ")[i], a, b)


def test_jobs_and_uploads_expire_with_their_files(root):
    import time as _time

    src = write_raster(root / "e.tif", scene(100, 100)[0])
    with TestClient(make_app(root, job_ttl_s=0.5)) as c:
        up = c.post("/v1/uploads", headers=AUTH, content=src.read_bytes()).json()["upload_id"]
        job_id = c.post("/v1/jobs/segment", headers=AUTH,
                        json={"input": {"upload_id": up}, "classes": "a; b"}).json()["id"]
        assert wait_for(c, job_id)["state"] == "done"
        job_dir = root / "engine-data" / "jobs" / job_id
        assert job_dir.exists()
        _time.sleep(0.6)
        assert c.app.state.store.expire() == 2  # the expiry thread does this every minute
        assert c.get(f"/v1/jobs/{job_id}", headers=AUTH).status_code == 404
        assert not job_dir.exists() and not list((root / "engine-data" / "uploads").iterdir())
        gone = c.post("/v1/jobs/segment", headers=AUTH, json={"input": {"upload_id": up}, "classes": "a"})
        assert gone.status_code == 404 and "expired" in gone.json()["detail"]


def test_a_bbox_in_a_custom_crs_given_as_wkt_is_placed(client, root):
    """A CRS without an authority code (a custom one in QGIS) is sent as its WKT, thousands of characters:
    the bbox in it is placed as in the raster's own CRS."""
    from pyproj import CRS

    src = write_raster(root / "ortho.tif", scene(200, 200)[0])
    with rasterio.open(src) as ds:
        left, bottom, right, top = ds.bounds
        native = CRS.from_user_input(ds.crs)
    custom = native.to_wkt(pretty=True).replace(native.name, "custom")  # as QGIS sends a custom CRS
    assert len(custom) > 200
    box = [left + 20, bottom + 20, left + 60, bottom + 50]
    created = _segment(client, src, bbox=box, bbox_crs=custom)
    assert created.status_code == 202, created.text
    status = wait_for(client, created.json()["id"])
    assert status["state"] == "done", status
    got = client.get(f"/v1/jobs/{status['id']}/files/result_classes.tif", headers=AUTH)
    with rasterio.MemoryFile(got.content) as mem, mem.open() as ds:
        assert ds.bounds.left == pytest.approx(box[0]) and ds.bounds.top == pytest.approx(box[3])


def test_a_mask_alone_reads_and_writes_only_its_bounding_box(client, root):
    import shapely

    src = write_raster(root / "ortho.tif", scene(400, 400)[0])  # origin 500000, 5200000, 0.5 m: 200 m a side
    with rasterio.open(src) as ds:
        left, top = ds.bounds.left, ds.bounds.top
    field = shapely.Polygon([(left + 20, top - 20), (left + 60, top - 30), (left + 40, top - 70)])  # 40 × 50 m
    created = _segment(client, src, mask_wkt=field.wkt, polygons=False)
    assert created.status_code == 202, created.text
    status = wait_for(client, created.json()["id"])
    assert status["state"] == "done", status
    got = client.get(f"/v1/jobs/{status['id']}/files/result_classes.tif", headers=AUTH)
    with rasterio.MemoryFile(got.content) as mem, mem.open() as ds:
        assert (ds.width, ds.height) == (80, 100)  # the field's bounding box, not the 400 × 400 raster
        assert ds.bounds.left == pytest.approx(left + 20) and ds.bounds.top == pytest.approx(top - 20)
        labels = ds.read(1)
    assert (labels == 255).any() and (labels != 255).any()  # outside the triangle: no data
