"""Hostile request bodies get a clear 4xx with a JSON `detail` naming the problem: never a 5xx.

Each was a 500 once: NaN/Infinity (the 422 answer echoed them and could not be written as JSON),
a bbox of ±1e308 (overflow mapping it to pixels), lone surrogates (no UTF-8 for them), NUL bytes and
over-long names in paths, and an up-sampler path naming a file that holds no weights.
"""

from __future__ import annotations

import json

import pytest
import rasterio
import shapely
import torch

from tests.engine.api_helpers import AUTH, wait_for
from tests.engine.rasters import scene, write_raster

JSON = {**AUTH, "content-type": "application/json"}


@pytest.fixture
def src(root):
    return write_raster(root / "in.tif", scene(100, 100)[0])


def _post_raw(client, url: str, raw: str):
    """Send `raw` as the body byte for byte: NaN, Infinity and `\\ud800` escapes are not what `json=` writes."""
    return client.post(url, headers=JSON, content=raw.encode("utf-8"))


def _detail(response, status: int) -> str:
    assert response.status_code == status, (response.status_code, response.text[:400])
    body = json.loads(response.text, parse_constant=lambda c: pytest.fail(f"{c} in the answer: not strict JSON"))
    assert isinstance(body["detail"], str) and body["detail"]
    return body["detail"]


@pytest.mark.parametrize("field, value", [
    ("threshold", "NaN"), ("gsd", "Infinity"), ("global_bias", "-Infinity"), ("min_area", "NaN"),
    ("bbox", "[0, 0, NaN, 1]"), ("window", "[0, 0, Infinity, 1]"), ("classes", "NaN"), ("scores", "Infinity"),
    ("no_such_field", "NaN"),
])
def test_non_finite_numbers_get_a_422_in_valid_json(client, src, field, value):
    got = _post_raw(client, "/v1/jobs/segment",
                    f'{{"input": {{"path": "{src}"}}, "classes": ["water"], "{field}": {value}}}')
    assert field in _detail(got, 422)


def test_non_finite_numbers_in_region_labels_get_a_422(client, src):
    got = _post_raw(client, "/v1/regions/label",
                    f'{{"input": {{"path": "{src}"}}, "classes": "a", "regions": [{{"bbox": [0, 0, NaN, 4]}}]}}')
    assert "regions.0.bbox" in _detail(got, 422)


@pytest.mark.parametrize("url, extra", [
    ("/v1/jobs/segment", {"classes": ["water"]}),
    ("/v1/jobs/segment", {"classes": ["water"], "bbox_crs": "EPSG:4326"}),
    ("/v1/jobs/grid", {"classes": ["water"], "cell_px": 32}),
    ("/v1/jobs/search", {"query": "water"}),
])
def test_a_huge_bbox_gets_a_422_naming_it(client, src, url, extra):
    got = client.post(url, headers=AUTH, json={"input": {"path": str(src)}, "bbox": [-1e308, -1e308, 1e308, 1e308],
                                               **extra})
    assert "bbox" in _detail(got, 422)


def test_huge_region_coordinates_get_a_422(client, src):
    body = {"input": {"path": str(src)}, "classes": "a", "regions": [{"bbox": [-1e308, -1e308, 1e308, 1e308]}]}
    assert "regions.0" in _detail(client.post("/v1/regions/label", headers=AUTH, json=body), 422)
    body["regions"] = [{"polygon": [[0, 0], [1e308, 0], [0, -1e308]]}]
    assert "regions.0" in _detail(client.post("/v1/regions/label", headers=AUTH, json=body), 422)


@pytest.mark.parametrize("url, body, where", [
    ("/v1/prompts", '{"classes": ["a\\ud800b"]}', "classes.0"),
    ("/v1/prompts", '{"classes": "a\\udfff; b"}', "classes"),
    ("/v1/jobs/segment", '{"input": {"path": "SRC"}, "classes": ["a\\ud800b"]}', "classes.0"),
    ("/v1/jobs/segment", '{"input": {"path": "SRC\\ud800"}, "classes": ["a"]}', "input.path"),
    ("/v1/jobs/segment", '{"input": {"path": "SRC"}, "classes": ["a"], "model": "/m\\ud800.pt"}', "model"),
    ("/v1/jobs/segment", '{"input": {"path": "SRC"}, "classes": ["a"], "\\ud800": 1}', "key"),
    ("/v1/jobs/grid", '{"input": {"path": "SRC"}, "classes": "a\\ud800", "cell_px": 32}', "classes"),
    ("/v1/jobs/search", '{"input": {"path": "SRC"}, "query": "a\\ud800b"}', "query"),
    ("/v1/regions/label", '{"input": {"path": "SRC"}, "classes": "a\\ud800", "regions": [{"bbox": [0, 0, 4, 4]}]}',
     "classes"),
])
def test_lone_surrogates_get_a_422(client, src, url, body, where):
    detail = _detail(_post_raw(client, url, body.replace("SRC", str(src))), 422)
    assert where in detail and "surrogate" in detail


@pytest.mark.parametrize("name, message", [("x\x00.pt", "NUL byte"), ("x" * 300 + ".pt", "too long")],
                         ids=["nul-byte", "name-too-long"])
@pytest.mark.parametrize("field", ["input", "model", "upsampler"])
def test_an_unusable_path_gets_a_400(client, root, src, field, name, message):
    bad = f"{root}/{name}"
    body = {"input": {"path": bad if field == "input" else str(src)}, "classes": ["water"]}
    if field != "input":
        body[field] = bad
    assert message in _detail(client.post("/v1/jobs/segment", headers=AUTH, json=body), 400)


def test_a_nul_byte_in_a_region_label_input_gets_a_400(client, root):
    body = {"input": {"path": f"{root}/x\x00.tif"}, "classes": "a", "regions": [{"bbox": [0, 0, 4, 4]}]}
    assert "NUL byte" in _detail(client.post("/v1/regions/label", headers=AUTH, json=body), 400)


@pytest.mark.parametrize("name", ["in.tif", "notes.txt", "empty.ckpt"])
def test_an_upsampler_that_is_no_weights_gets_a_400(client, root, src, name):
    (root / "notes.txt").write_text("no weights here\n")
    (root / "empty.ckpt").write_bytes(b"")
    body = {"input": {"path": str(src)}, "classes": ["water"], "upsampler": str(root / name)}
    detail = _detail(client.post("/v1/jobs/segment", headers=AUTH, json=body), 400)
    assert "up-sampler" in detail and name in detail


def test_get_on_a_post_only_job_path_is_a_405_naming_post(client):
    for kind in ("segment", "grid", "search"):
        got = client.get(f"/v1/jobs/{kind}", headers=AUTH)
        assert "POST" in _detail(got, 405) and got.headers["allow"] == "POST"


def test_messages_name_the_requests_fields_not_the_command_lines_flags(client, root):
    """The engine's messages are written for the command line; a client reads them with its JSON
    fields: `"bands": [1, 1, 1]`, not `--bands 1,1,1` (a flag it has nowhere to pass)."""
    import numpy as np

    grey = write_raster(root / "grey.tif", np.zeros((1, 64, 64), dtype=np.uint8))
    for url, body in (("/v1/jobs/segment", {"classes": "a"}), ("/v1/jobs/search", {"query": "a pond"})):
        detail = _detail(client.post(url, headers=AUTH, json={"input": {"path": str(grey)}, **body}), 400)
        assert '"bands": [1, 1, 1]' in detail and "--" not in detail, detail
    plain = write_raster(root / "plain.tif", np.zeros((3, 64, 64), dtype=np.uint8), crs=None)
    detail = _detail(client.post("/v1/jobs/segment", headers=AUTH,
                                 json={"input": {"path": str(plain)}, "classes": "a", "gsd": 1.0}), 400)
    assert '"gsd"' in detail and "--gsd" not in detail, detail


def test_a_grid_cell_under_eight_pixels_is_a_400_at_submit(client, src):
    """It used to be accepted (202) and the job failed a moment later ("smaller than one pixel")."""
    body = {"input": {"path": str(src)}, "classes": "water; grass", "cell_m": 0.001}
    detail = _detail(client.post("/v1/jobs/grid", headers=AUTH, json=body), 400)
    assert "cells must be at least 8 pixels" in detail and '"cell_m": 4' in detail, detail
    assert client.get("/v1/health").json()["queue_length"] == 0


@pytest.mark.parametrize("url, extra", [
    ("/v1/jobs/segment", {"classes": "water; gra\x00ss"}),
    ("/v1/jobs/segment", {"classes": ["water", "road\x1b[31m"]}),
    ("/v1/jobs/segment", {"classes": "water", "background": "no\x07thing"}),
    ("/v1/jobs/grid", {"classes": "wa\x00ter; road", "cell_m": 10}),
    ("/v1/jobs/search", {"query": "a pool\x00 by a house"}),
    ("/v1/prompts", {}),
])
def test_control_characters_in_class_names_get_a_400(client, src, url, extra):
    body = {"input": {"path": str(src)}, **extra} if url != "/v1/prompts" else {"classes": "a; b\x00c"}
    detail = _detail(client.post(url, headers=AUTH, json=body), 400)
    assert "control character" in detail, detail
    assert client.get("/v1/jobs", headers=AUTH).json() == []  # no job was made


@pytest.mark.parametrize("classes, detail", [
    (["water", " "], "classes: class line 2 holds no name"),
    (["water", ","], "classes: class line 2 holds no name"),
    ([], "classes: no classes given"),
    (" ; ", "classes: no classes given"),
    (5, "classes: give text ('building,roof; road') or a list of class lines"),
])
def test_a_bad_class_list_is_named_in_the_words_of_the_request(client, src, classes, detail):
    """A list with a blank line was 'classes.constrained-str: Input should be a valid string' — the name of
    a branch of the schema's union, about the text form the client did not send."""
    got = _detail(client.post("/v1/jobs/segment", headers=AUTH, json={"input": {"path": str(src)},
                                                                      "classes": classes}), 422)
    assert got.startswith(detail) and "constrained" not in got, got


LONG_NAME = "森林" * 15  # 30 characters of CJK: ~90 tokens in a template, past 77, within Long-CLIP's 248


@pytest.mark.parametrize("url, extra", [
    ("/v1/jobs/segment", {"classes": f"water; {LONG_NAME}"}),
    ("/v1/jobs/segment", {"classes": "water", "background": LONG_NAME, "threshold": 0.5}),
    ("/v1/jobs/teach", {"classes": f"water; {LONG_NAME}", "labels": [{"wkt": "POLYGON ((500005 5199995, 500020 "
                        "5199995, 500020 5199980, 500005 5199980, 500005 5199995))", "label": "water"}]}),
    ("/v1/jobs/grid", {"classes": f"water; {LONG_NAME}", "cell_m": 10}),
    ("/v1/jobs/search", {"query": f"a pool by {LONG_NAME}"}),
])
def test_a_name_the_models_text_encoder_would_cut_short_is_a_400_at_submit(client, root, src, url, extra):
    """It was accepted (202) and the job failed once its model had loaded. Checked against the job's own
    model, before it is loaded (its file's context length) and once loaded: a Long-CLIP model reads the
    name whole, so it is accepted there."""
    from tests.engine.conftest import TINY, make_clip

    body = {"input": {"path": str(src)}, **extra}
    detail = _detail(client.post(url, headers=AUTH, json=body), 400)
    assert "is too long for the model's text encoder" in detail and "the model reads 77" in detail, detail
    assert client.get("/v1/jobs", headers=AUTH).json() == []  # no job was made
    long_clip = root / "long.pt"
    torch.save({"state_dict": make_clip(long_clip=True).state_dict()}, long_clip)
    accepted = client.post(url, headers=AUTH, json={**body, "model": str(long_clip), "arch": TINY})
    assert accepted.status_code == 202, accepted.text
    assert wait_for(client, accepted.json()["id"])["state"] == "done"
    detail = _detail(client.post(url, headers=AUTH, json={**body, "classes": f"water; {LONG_NAME * 3}"}
                                 if "classes" in body else {**body, "query": LONG_NAME * 3}), 400)
    assert "is too long" in detail, detail  # (the default model, its file read)


def test_labels_that_cannot_teach_and_references_that_check_nothing_are_a_400_at_submit(client, src):
    """Both were accepted (202) and the job failed; a label naming no class said only 'no labelled samples'."""
    with rasterio.open(src) as ds:
        left, top = ds.bounds.left, ds.bounds.top
    inside, far = shapely.box(left + 5, top - 20, left + 20, top - 5).wkt, shapely.box(0, 0, 10, 10).wkt
    teach = {"input": {"path": str(src)}, "classes": "water; grass, lawn"}
    for labels, message in [
        ([{"wkt": far, "label": "water"}], "no label overlaps the raster"),
        ([{"wkt": inside, "label": "roof"}, {"wkt": inside, "label": "Roof "}],
         "no label names a class: the labels say roof; the classes are water, grass"),
        ([{"wkt": inside, "label": "road"}, {"wkt": far, "label": "LAWN"}],
         "no label can teach (the classes are water, grass): road, LAWN (outside the raster)"),
    ]:
        assert message in _detail(client.post("/v1/jobs/teach", headers=AUTH, json={**teach, "labels": labels}), 400)
    segmented = client.post("/v1/jobs/segment", headers=AUTH, json={**teach})
    job = wait_for(client, segmented.json()["id"])["id"]
    for reference, message in [
        ([{"wkt": far, "label": "water"}], f"no reference polygon overlaps result_classes.tif of job {job}"),
        ([{"wkt": inside, "label": "roof"}], "no reference polygon names a class of result_classes.tif (water, grass)"),
    ]:
        got = client.post("/v1/jobs/accuracy", headers=AUTH, json={"job": job, "reference": reference})
        assert _detail(got, 400) == message
    assert [j["kind"] for j in client.get("/v1/jobs", headers=AUTH).json()] == ["segment"]


HUGE = "POLYGON((-1e300 -1e300, 1e300 -1e300, 1e300 1e300, -1e300 1e300, -1e300 -1e300))"


@pytest.mark.parametrize("url, extra, where", [
    ("/v1/jobs/segment", {"classes": "a; b", "mask_wkt": HUGE}, "the mask"),
    ("/v1/jobs/grid", {"classes": "a; b", "cell_m": 10, "mask_wkt": HUGE}, "the mask"),
    ("/v1/jobs/teach", {"classes": "a; b", "labels": [{"wkt": HUGE, "label": "a"}]}, "labels.0.wkt"),
])
def test_a_wkt_coordinate_beyond_1e15_is_a_400(client, src, url, extra, where):
    """GEOS overflows on ±1e300: a grid's mask covering everything was taken to cover nothing (the job failed),
    a segmentation's was accepted."""
    detail = _detail(client.post(url, headers=AUTH, json={"input": {"path": str(src)}, **extra}), 400)
    assert detail == f"{where} has a coordinate that is not a number within ±1e+15", detail


def test_a_bound_is_written_as_a_number_not_300_digits(client, src):
    detail = _detail(client.post("/v1/jobs/segment", headers=AUTH,
                                 json={"input": {"path": str(src)}, "classes": "a; b", "nodata": 1e308}), 422)
    assert detail == "nodata: Input should be less than or equal to 1e+300", detail
