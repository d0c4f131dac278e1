"""Regions over no data get no class, as grid cells do: each labelled region reports its valid fraction
(the share of its pixels — inside the polygon, for a polygon — holding data; pixels outside the raster
count as no data) and one under half valid has no best class, score or probabilities. Through the
library, the CLI's `<regions>_labels.gpkg` and `POST /v1/regions/label`, on real rasters."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely
from pyogrio.raw import read, write
from shapely import affinity

from engine.cli import main
from engine.dense.scenes import SceneClassifier
from engine.geo.regions import Region
from engine.geo.scenes import GridJob, classify_grid, label_regions
from engine.geo.source import RasterSource
from tests.engine.api_helpers import AUTH, write_checkpoint
from tests.engine.rasters import scene, write_raster

CLASSES = "building; road; tree; water"
NAMES = ["building", "road", "tree", "water"]
H, W = 200, 400  # the western half (columns 0-199) holds no data


@pytest.fixture(scope="module")
def classifier(tiny_model):
    return SceneClassifier(tiny_model, CLASSES)


def nan_west(path):
    """A float raster whose western half is NaN (no data whatever the file declares)."""
    data = scene(H, W, seed=2)[0].astype(np.float32)
    data[:, :, : W // 2] = np.nan
    return write_raster(path, data)


def nodata_west(path):
    """A uint8 raster declaring nodata=0, its western half 0 in every band."""
    data = scene(H, W, seed=2)[0]
    data[data == 0] = 1
    data[:, :, : W // 2] = 0
    return write_raster(path, data, nodata=0)


def assert_classified(label):
    assert label["best"] in NAMES and 0 < label["score"] <= 1
    assert sorted(label["probabilities"]) == NAMES and label["probabilities"][label["best"]] == label["score"]


def assert_unclassified(label):
    assert label["best"] is None and label["score"] is None and label["probabilities"] is None


@pytest.mark.parametrize("make", [nan_west, nodata_west], ids=["nan", "declared-nodata"])
def test_a_region_on_no_data_gets_no_class_and_one_on_data_does(tmp_path, classifier, make):
    src = make(tmp_path / "half.tif")
    regions = [Region(bbox=(250.0, 20.0, 350.0, 120.0)),  # on the valid half
               Region(bbox=(20.0, 20.0, 120.0, 120.0)),  # on the no-data half
               Region(bbox=(150.0, 20.0, 250.0, 120.0)),  # half over each
               Region(bbox=(100.0, 20.0, 250.0, 120.0))]  # a third valid
    with RasterSource(src) as source:
        valid, empty, straddling, third = label_regions(source, regions, classifier, crs="pixel")
    assert valid["valid_fraction"] == 1.0
    assert_classified(valid)
    assert empty["valid_fraction"] == 0.0
    assert_unclassified(empty)
    assert straddling["valid_fraction"] == pytest.approx(0.5, abs=0.02)
    assert third["valid_fraction"] == pytest.approx(1 / 3, abs=0.02)
    assert_unclassified(third)
    assert [lb["index"] for lb in (valid, empty, straddling, third)] == [0, 1, 2, 3]


def test_a_polygon_counts_only_its_own_pixels(tmp_path, classifier):
    """A triangle pointing east from the no-data half: 60% of its bounding box holds data, only 36% of
    the triangle does — it gets no class, while its bounding box as a region gets one."""
    src = nan_west(tmp_path / "half.tif")
    ring = ((120.0, 20.0), (320.0, 100.0), (120.0, 180.0))
    want = shapely.Polygon(ring).intersection(shapely.box(200, 0, W, H)).area / shapely.Polygon(ring).area
    assert want == pytest.approx(0.36)
    with RasterSource(src) as source:
        triangle, box = label_regions(source, [Region(polygon=ring), Region(bbox=(120.0, 20.0, 320.0, 180.0))],
                                      classifier, crs="pixel")
    assert triangle["valid_fraction"] == pytest.approx(want, abs=0.02)
    assert_unclassified(triangle)
    assert box["valid_fraction"] == pytest.approx(0.6, abs=0.02)
    assert_classified(box)


def test_the_part_of_a_region_outside_the_raster_counts_as_no_data(tmp_path, classifier):
    src = write_raster(tmp_path / "full.tif", scene(H, W, seed=2)[0])  # every pixel valid
    with RasterSource(src) as source:
        regions = [Region(bbox=(300.0, 20.0, 500.0, 120.0)), Region(bbox=(350.0, 20.0, 550.0, 120.0))]
        half_out, mostly_out = label_regions(source, regions, classifier, crs="pixel")
    assert half_out["valid_fraction"] == pytest.approx(0.5, abs=0.01)
    assert_classified(half_out)
    assert mostly_out["valid_fraction"] == pytest.approx(0.25, abs=0.01)
    assert_unclassified(mostly_out)


def test_an_all_nan_raster_gives_no_class_where_it_used_to_give_the_fill_colours(tmp_path, classifier):
    src = write_raster(tmp_path / "allnodata.tif", np.full((3, 100, 100), np.nan, dtype=np.float32))
    with RasterSource(src) as source:
        [label] = label_regions(source, [Region(bbox=(10.0, 10.0, 90.0, 90.0))], classifier, crs="pixel")
    assert label["valid_fraction"] == 0.0
    assert_unclassified(label)


def test_a_region_and_the_grid_cell_it_matches_get_the_same_verdict(tmp_path, classifier):
    """One rule for cells and regions: a region drawn exactly over a grid cell gets the cell's valid
    fraction, and its class and score (or none) — on both halves."""
    src = nan_west(tmp_path / "half.tif")
    classify_grid(GridJob(str(src), str(tmp_path / "out"), cell_px=100.0), classifier)
    meta, _, _, columns = read(tmp_path / "out" / "half_grid.gpkg")
    cells = dict(zip(meta["fields"], columns))
    regions = [Region(bbox=(c * 100.0, r * 100.0, c * 100.0 + 100, r * 100.0 + 100))
               for r, c in zip(cells["row"], cells["col"])]
    with RasterSource(src) as source:
        labels = label_regions(source, regions, classifier, crs="pixel")
    assert [lb["valid_fraction"] for lb in labels] == pytest.approx(list(cells["valid_fraction"]), abs=0.01)
    assert [lb["best"] for lb in labels] == list(cells["class"])
    assert sum(lb["best"] is None for lb in labels) == 4  # the western 2 x 2 cells
    for lb, score in zip(labels, cells["score"]):
        assert (lb["score"] is None and np.isnan(score)) or lb["score"] == pytest.approx(score, rel=1e-5)
    # a cell without a class has no class index either (NULL, read as NaN), not a -1 a style would list
    assert [np.isnan(i) for i in cells["class_index"]] == [lb["best"] is None for lb in labels]


def test_cli_writes_valid_fraction_and_null_class_for_a_polygon_over_no_data(tmp_path, capsys):
    src = nan_west(tmp_path / "r.tif")
    pixel = [shapely.box(250, 20, 350, 120), shapely.box(20, 20, 120, 120)]
    geoms = [affinity.affine_transform(g, [0.5, 0, 0, -0.5, 500000.0, 5200000.0]) for g in pixel]  # → EPSG:32633
    write(str(tmp_path / "reg.gpkg"), np.array(shapely.to_wkb(geoms), dtype=object),
          [np.array(["east", "west"], dtype=object)], ["name"], layer="reg", driver="GPKG", geometry_type="Polygon",
          crs="EPSG:32633")
    ckpt = str(write_checkpoint(tmp_path))
    assert main(["classify", str(src), "--classes", CLASSES, "--regions", str(tmp_path / "reg.gpkg"),
                 "-o", str(tmp_path / "o"), "--model", ckpt, "--arch", "tiny-vit-16"]) == 0
    printed = capsys.readouterr().out
    assert "(no data)" in printed and "valid 0%" in printed and "valid 100%" in printed
    meta, _, _, columns = read(tmp_path / "o" / "reg_labels.gpkg")
    fields = dict(zip(meta["fields"], columns))
    assert list(fields["name"]) == ["east", "west"]
    assert list(fields["valid_fraction"]) == [1.0, 0.0]
    assert fields["class"][0] in NAMES and 0 < fields["score"][0] <= 1
    assert sorted(json.loads(fields["probabilities"][0])) == NAMES
    assert fields["class"][1] is None and np.isnan(fields["score"][1]) and fields["probabilities"][1] is None


def test_api_answers_null_class_and_the_valid_fraction(tmp_path, client):
    half = str(nan_west(tmp_path / "half.tif"))
    allnodata = str(write_raster(tmp_path / "allnodata.tif", np.full((3, 100, 100), np.nan, dtype=np.float32)))
    body = {"input": {"path": half}, "classes": CLASSES, "crs": "pixel",
            "regions": [{"bbox": [250, 20, 350, 120]}, {"bbox": [20, 20, 120, 120]},
                        {"polygon": [[150, 20], [250, 20], [250, 120], [150, 120]]}]}
    got = client.post("/v1/regions/label", headers=AUTH, json=body)
    assert got.status_code == 200, got.text
    valid, empty, straddling = got.json()["regions"]
    assert valid["best"] in NAMES and valid["score"] > 0 and valid["valid_fraction"] == 1.0
    assert sorted(valid["probabilities"]) == NAMES
    assert empty == {"index": 1, "best": None, "score": None, "probabilities": None, "valid_fraction": 0.0}
    assert straddling["valid_fraction"] == pytest.approx(0.5, abs=0.02)
    got = client.post("/v1/regions/label", headers=AUTH,
                      json={**body, "input": {"path": allnodata}, "regions": [{"bbox": [10, 10, 90, 90]}]})
    assert got.status_code == 200, got.text
    assert got.json()["regions"][0] == {"index": 0, "best": None, "score": None, "probabilities": None,
                                        "valid_fraction": 0.0}
    # the published schema says so: clients generated from it accept the nulls
    spec = client.get("/openapi.json", headers=AUTH).json()["components"]["schemas"]["RegionLabel"]
    for name in ("best", "score", "probabilities"):
        assert {"type": "null"} in spec["properties"][name]["anyOf"], spec["properties"][name]
    assert spec["properties"]["valid_fraction"]["minimum"] == 0 and spec["properties"]["valid_fraction"]["maximum"] == 1
    assert set(spec["required"]) >= {"index", "best", "score", "probabilities", "valid_fraction"}


def test_a_region_crossing_the_edge_is_read_at_its_scale_with_no_data_beyond(tmp_path):
    """The crop of a region half outside the raster: the part inside where it lies, at the region's scale
    (not the inside part stretched over the whole crop), the CLIP mean colour beyond the edge."""
    from rasterio.windows import Window

    from engine.geo.regions import read_region, to_pixel_geometry
    from engine.geo.source import CLIP_MEAN_RGB

    src = write_raster(tmp_path / "full.tif", scene(H, W, seed=2)[0])
    with RasterSource(src) as source:
        crop = read_region(source, to_pixel_geometry(source, Region(bbox=(300.0, 20.0, 500.0, 220.0)), "pixel"), 224)
        inside, _ = source.read_window(Window(300, 20, 100, 180), 202, 112)
    assert np.allclose(crop[:, 112:], CLIP_MEAN_RGB)  # east of the raster
    assert np.allclose(crop[202:, :112], CLIP_MEAN_RGB)  # south of it
    assert np.allclose(crop[:202, :112], inside)


def undeclared_zero_west(path):
    """A uint8 raster whose western half is 0 in every band, declaring no nodata (a black border the file
    does not say is one)."""
    data = scene(H, W, seed=2)[0]
    data[data == 0] = 1
    data[:, :, : W // 2] = 0
    return write_raster(path, data)


def test_a_nodata_value_given_by_the_user_counts_for_regions_the_grid_and_search(tmp_path, client):
    """`nodata` (--nodata in the CLI) is no data for labelling, the grid and search as for a segmentation: a
    region on the black half gets no class and the grid's cells there are not classified."""
    src = str(undeclared_zero_west(tmp_path / "black_west.tif"))
    body = {"input": {"path": src}, "classes": CLASSES, "crs": "pixel",
            "regions": [{"bbox": [250, 20, 350, 120]}, {"bbox": [20, 20, 120, 120]}]}
    without = client.post("/v1/regions/label", headers=AUTH, json=body).json()["regions"]
    assert [r["valid_fraction"] for r in without] == [1.0, 1.0]  # black pixels are data unless said otherwise
    given = client.post("/v1/regions/label", headers=AUTH, json={**body, "nodata": 0}).json()["regions"]
    assert given[0]["valid_fraction"] == 1.0 and given[0]["best"] in NAMES
    assert_unclassified(given[1]) and given[1]["valid_fraction"] == 0.0

    from tests.engine.api_helpers import wait_for

    grid = {"input": {"path": src}, "classes": CLASSES, "cell_px": 50, "nodata": 0}
    job = client.post("/v1/jobs/grid", headers=AUTH, json=grid)
    assert job.status_code == 202, job.text
    status = wait_for(client, job.json()["id"])
    assert status["state"] == "done", status
    files = status["files"]
    name = next(f for f in files if f.endswith(".gpkg"))
    data = client.get(f"/v1/jobs/{job.json()['id']}/files/{name}", headers=AUTH).content
    (tmp_path / name).write_bytes(data)
    meta, _, geometry, columns = read(tmp_path / name)
    fields = dict(zip(meta["fields"], columns))
    x = np.array([shapely.from_wkb(g).centroid.x for g in geometry])
    west = x < (x.min() + x.max()) / 2  # 8 columns of cells, the western 4 on the black half
    assert np.all(fields["valid_fraction"][west] == 0.0) and np.all(fields["valid_fraction"][~west] == 1.0)

    search = client.post("/v1/jobs/search", headers=AUTH,
                         json={"input": {"path": src}, "query": "a lake", "top_k": 3, "nodata": 0})
    assert search.status_code == 202, search.text
    assert wait_for(client, search.json()["id"])["state"] == "done"
