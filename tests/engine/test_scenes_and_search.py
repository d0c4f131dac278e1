"""Region labelling, the scene grid and text search: right places, right shapes, one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from fastapi.testclient import TestClient

from engine.cli import main
from engine.dense.scenes import SceneClassifier
from engine.geo.regions import Region, grid_cells
from engine.geo.scenes import GridJob, classify_grid, label_regions
from engine.geo.search import SearchJob, search_raster
from engine.errors import InputError
from engine.geo.source import RasterSource
from tests.engine.api_helpers import AUTH, make_app, wait_for
from tests.engine.rasters import scene, write_raster

CLASSES = "water; grass; building,roof"


@pytest.fixture(scope="module")
def classifier(tiny_model):
    """Class embeddings taken from example crops (a stand-in for a trained text side)."""
    clf = SceneClassifier(tiny_model, CLASSES)
    rgb, labels = scene(448, 448, seed=11)
    crops = {0: rgb[:, 100:200, 20:120], 1: rgb[:, 300:400, 250:350]}
    example = np.zeros((3, 120, 120), dtype=np.uint8)
    example[:] = np.array([190, 60, 50], dtype=np.uint8)[:, None, None]
    crops[2] = example
    from PIL import Image

    def crop224(a):
        return np.asarray(Image.fromarray(a.transpose(1, 2, 0)).resize((224, 224))).astype(np.float32) / 255

    proto = clf.embed([crop224(crops[k]) for k in (0, 1, 2)])
    clf.text = proto[clf.prompts.name_to_class]
    return clf


def test_regions_are_labelled_where_they_are(tmp_path, classifier):
    src = write_raster(tmp_path / "s.tif", scene(400, 600, seed=2)[0], origin=(500000.0, 5200000.0), res=0.5)
    with RasterSource(src) as source:
        # west: water; east below the road: grass. In map coordinates, in pixels, and as a polygon.
        water = Region(bbox=(500010.0, 5199850.0, 500060.0, 5199900.0))
        grass_px = Region(bbox=(420.0, 300.0, 500.0, 380.0))
        water_poly = Region(polygon=((30.0, 30.0), (150.0, 40.0), (90.0, 200.0)))
        got = label_regions(source, [water], classifier)
        got += label_regions(source, [grass_px, water_poly], classifier, crs="pixel")
    assert [g["best"] for g in got] == ["water", "grass", "water"]
    for g in got:
        assert 0.5 < sum(g["probabilities"].values()) <= 1.0 + 1e-6  # max over synonyms of a softmax over names
        assert list(g["probabilities"].values()) == sorted(g["probabilities"].values(), reverse=True)


def test_region_in_another_crs_is_reprojected(tmp_path, classifier):
    from rasterio.warp import transform_bounds

    src = write_raster(tmp_path / "s.tif", scene(400, 600, seed=2)[0])
    lonlat = transform_bounds("EPSG:32633", "EPSG:4326", 500010.0, 5199850.0, 500060.0, 5199900.0)
    with RasterSource(src) as source:
        a = label_regions(source, [Region(bbox=lonlat)], classifier, crs="EPSG:4326")[0]
        b = label_regions(source, [Region(bbox=(500010.0, 5199850.0, 500060.0, 5199900.0))], classifier)[0]
    assert a["best"] == b["best"] == "water"


def test_grid_cells_cover_the_raster_and_classes_fall_in_place(tmp_path, classifier):
    src = write_raster(tmp_path / "g.tif", scene(400, 600, seed=4)[0])
    summary = classify_grid(GridJob(str(src), str(tmp_path / "out"), cell_m=50.0), classifier)
    from pyogrio.raw import read

    meta, _, wkb, fields = read(tmp_path / "out" / "g_grid.gpkg")
    data = dict(zip(meta["fields"], fields))
    assert summary["cells"] == len(wkb) == len(grid_cells(RasterSource(src), (100.0, 100.0)))
    west = data["col"] == 0
    assert set(data["class"][west]) == {"water"}  # the western fifth is water
    assert summary["classes"][0]["cells"] >= west.sum()


def test_search_heatmap_on_the_source_grid_and_top_k_boxes(tmp_path, tiny_model):
    src = write_raster(tmp_path / "q.tif", scene(300, 500)[0], res=0.25)
    summary = search_raster(SearchJob(str(src), str(tmp_path / "o"), query="a red roof, next to a road", top_k=4,
                                      gsd=0.5), tiny_model)
    with rasterio.open(src) as s, rasterio.open(tmp_path / "o" / "q_heatmap.tif") as h:
        assert h.crs == s.crs and h.transform.almost_equals(s.transform) and h.shape == s.shape
        values = h.read(1)
    assert np.all((values >= -1.0) & (values <= 1.0))
    scores = [b["score"] for b in summary["boxes"]]
    assert 1 <= len(scores) <= 4 and scores == sorted(scores, reverse=True)
    assert summary["query"] == "a red roof, next to a road"


def test_api_labels_regions_and_runs_grid_and_search_jobs(tmp_path):
    src = write_raster(tmp_path / "a.tif", scene(300, 400)[0])
    with TestClient(make_app(tmp_path)) as client:
        body = {"input": {"path": str(src)}, "classes": ["water", "grass", "roof"],
                "regions": [{"bbox": [10, 10, 60, 60]}] * 9 + [{"polygon": [[5, 5], [80, 5], [40, 70]]}], "crs": "pixel"}
        got = client.post("/v1/regions/label", headers=AUTH, json=body)
        assert got.status_code == 200, got.text
        regions = got.json()["regions"]
        assert len(regions) == 10 and all(r["best"] in ("water", "grass", "roof") for r in regions)
        bad = client.post("/v1/regions/label", headers=AUTH, json={**body, "regions": [{"bbox": [900, 900, 950, 950]}]})
        assert bad.status_code == 400 and "outside the raster" in bad.json()["detail"]
        grid = client.post("/v1/jobs/grid", headers=AUTH, json={"input": {"path": str(src)}, "classes": "water; grass",
                                                                "cell_m": 40})
        assert wait_for(client, grid.json()["id"])["files"] == ["result_grid.gpkg", "result_grid_summary.json"]
        search = client.post("/v1/jobs/search", headers=AUTH,
                             json={"input": {"path": str(src)}, "query": "a lake", "top_k": 3})
        status = wait_for(client, search.json()["id"])
        assert set(status["files"]) == {"result_boxes.gpkg", "result_heatmap.tif", "result_search_summary.json"}
        assert client.post("/v1/jobs/grid", headers=AUTH,
                           json={"input": {"path": str(src)}, "classes": "a"}).status_code == 400


def test_cli_classify_and_search(tmp_path, capsys):
    from tests.engine.api_helpers import write_checkpoint

    ckpt = str(write_checkpoint(tmp_path))
    src = write_raster(tmp_path / "c.tif", scene(200, 300)[0])
    model = ["--model", ckpt, "--arch", "tiny-vit-16", "-q"]
    assert main(["classify", str(src), "--classes", "water; grass", "--cell", "25", "-o", str(tmp_path / "o"), *model]) == 0
    assert main(["classify", str(src), "--classes", "water; grass", "--regions", str(tmp_path / "o" / "c_grid.gpkg"),
                 "-o", str(tmp_path / "o"), *model]) == 0
    assert (tmp_path / "o" / "c_grid_labels.gpkg").exists()
    assert main(["search", str(src), "--query", "a pond", "--no-heatmap", "-o", str(tmp_path / "o"), *model]) == 0
    summary = json.loads((tmp_path / "o" / "c_search_summary.json").read_text())
    assert summary["boxes"] and "heatmap" not in summary["files"] and summary["notes"] == []
    capsys.readouterr()
    # what the engine noticed about the area is said, as by segment: a bbox reaching beyond the raster
    assert main(["search", str(src), "--query", "a pond", "--no-heatmap", "--bbox", "499990,5199900,500100,5200010",
                 "-o", str(tmp_path / "o2"), *model]) == 0
    assert "farslip: note: bbox reaches beyond the raster" in capsys.readouterr().err
    assert json.loads((tmp_path / "o2" / "c_search_summary.json").read_text())["notes"][0].startswith("bbox reaches")
    assert main(["classify", str(src), "--classes", "a", "-o", str(tmp_path / "o"), *model]) == 2
    assert "give either --cell" in capsys.readouterr().err
    assert main(["search", str(src), "--query", "  ", "-o", str(tmp_path / "o"), *model]) == 2
    assert "query is empty" in capsys.readouterr().err


def test_cli_classify_and_search_never_replace_a_result_silently(tmp_path, capsys):
    from tests.engine.api_helpers import write_checkpoint

    ckpt = str(write_checkpoint(tmp_path))
    src = write_raster(tmp_path / "c.tif", scene(200, 300)[0])
    out = tmp_path / "o"
    model = ["-o", str(out), "--model", ckpt, "--arch", "tiny-vit-16", "-q"]
    grid = ["classify", str(src), "--classes", "water; grass", "--cell", "25", *model]
    assert main(grid) == 0
    stamp = (out / "c_grid.gpkg").stat().st_mtime_ns
    capsys.readouterr()
    assert main(grid) == 2  # refused before any work: the earlier grid is untouched
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "c_grid" in err[0] and "--overwrite" in err[0]
    assert (out / "c_grid.gpkg").stat().st_mtime_ns == stamp
    assert main([*grid, "--overwrite"]) == 0 and (out / "c_grid.gpkg").stat().st_mtime_ns != stamp

    regions = ["classify", str(src), "--classes", "water; grass", "--regions", str(out / "c_grid.gpkg"), *model]
    assert main(regions) == 0
    assert main(regions) == 2 and "c_grid_labels.gpkg" in capsys.readouterr().err
    assert main([*regions, "--overwrite"]) == 0

    search = ["search", str(src), "--query", "a pond", *model]
    assert main(search) == 0 and (out / "c_heatmap.tif").exists()
    assert main([*search, "--no-heatmap"]) == 2 and "--overwrite" in capsys.readouterr().err
    assert main([*search, "--no-heatmap", "--overwrite"]) == 0
    assert not (out / "c_heatmap.tif").exists()  # the earlier run's heat map goes with its boxes
    assert sorted(json.loads((out / "c_search_summary.json").read_text())["files"]) == ["boxes", "summary"]


def test_grid_cells_and_search_boxes_are_square_on_the_ground_where_pixels_are_not(tmp_path, classifier, tiny_model):
    """0.5 × 0.25 m pixels: a 20 m cell is 40 columns by 80 rows, and the model sees it unstretched; the
    search's boxes are square on the ground too."""
    from affine import Affine
    from pyogrio.raw import read
    from shapely import from_wkb

    src = write_raster(tmp_path / "ns.tif", scene(320, 200, seed=5)[0],
                       transform=Affine(0.5, 0, 500000.0, 0, -0.25, 5200000.0))
    summary = classify_grid(GridJob(str(src), str(tmp_path / "grid"), cell_m=20.0), classifier)
    assert summary["cell_size_m"] == pytest.approx(20.0)
    _, _, wkb, _ = read(tmp_path / "grid" / "ns_grid.gpkg")
    sides = {(round(b[2] - b[0], 6), round(b[3] - b[1], 6)) for b in (from_wkb(g).bounds for g in wkb)}
    assert (20.0, 20.0) in sides and all(w <= 20.0 and h <= 20.0 for w, h in sides)  # (edge cells clipped)
    found = search_raster(SearchJob(str(src), str(tmp_path / "search"), query="a roof", top_k=3, heatmap=False),
                          tiny_model)
    for box in found["boxes"]:
        minx, miny, maxx, maxy = box["bounds"]
        assert maxx - minx == pytest.approx(maxy - miny)


def test_grid_and_search_inside_selected_polygons_only(tmp_path, classifier, tiny_model):
    """The plugin's "Selected polygons": cells the polygons do not reach are left out, not the whole bounding
    box classified; what lies outside counts as no data (a cell mostly outside gets no class); the heat map
    is no data outside; search boxes lie at least half inside."""
    import shapely
    from pyogrio.raw import read

    src = write_raster(tmp_path / "m.tif", scene(400, 600, seed=4)[0])  # 300 m × 200 m, 0.5 m pixels
    x0, y1 = 500000.0, 5200000.0
    field = shapely.Polygon([(x0 + 5, y1 - 5), (x0 + 195, y1 - 5), (x0 + 5, y1 - 195)])  # a triangle, top left
    summary = classify_grid(GridJob(str(src), str(tmp_path / "g"), cell_m=50.0, mask_wkt=field.wkt), classifier)
    meta, _, wkb, fields = read(tmp_path / "g" / "m_grid.gpkg")
    data = dict(zip(meta["fields"], fields))
    cells = shapely.from_wkb(wkb)
    # cells from the triangle's top-left corner: 4 × 4 in its bounding box, 10 meet it (4 + 3 + 2 + 1 by row)
    assert summary["cells"] == len(cells) == 10
    assert all(c.intersection(field).area > 0 for c in cells)
    for cell, fraction, name in zip(cells, data["valid_fraction"], data["class"]):
        inside = cell.intersection(field).area / cell.area
        assert abs(fraction - inside) < 0.03, (fraction, inside)
        assert (name is None) == (inside < 0.5)
    # the same area as a mask in another CRS gives the same cells
    from rasterio.warp import transform_geom

    lonlat = shapely.geometry.shape(transform_geom("EPSG:32633", "EPSG:4326", shapely.geometry.mapping(field)))
    again = classify_grid(GridJob(str(src), str(tmp_path / "g4326"), cell_m=50.0, mask_wkt=lonlat.wkt,
                                  mask_crs="EPSG:4326"), classifier)
    assert again["cells"] == 10

    found = search_raster(SearchJob(str(src), str(tmp_path / "s"), query="a lake", top_k=50, mask_wkt=field.wkt),
                          tiny_model)
    with rasterio.open(tmp_path / "s" / "m_heatmap.tif") as h:  # the triangle's bounding box only
        heat = h.read(1)
        assert h.shape == (380, 380) and h.transform.c == x0 + 5 and h.transform.f == y1 - 5
        nodata = h.nodata
    assert heat[350, 350] == nodata and heat[20, 20] != nodata  # outside / inside the triangle
    assert found["boxes"]
    for box in found["boxes"]:
        assert shapely.box(*box["bounds"]).intersection(field).area >= 0.45 * shapely.box(*box["bounds"]).area


def test_api_grid_and_search_take_a_mask(tmp_path):
    src = write_raster(tmp_path / "a.tif", scene(300, 400)[0])
    square = "POLYGON((500010 5199990,500060 5199990,500060 5199940,500010 5199940,500010 5199990))"
    with TestClient(make_app(tmp_path)) as client:
        grid = client.post("/v1/jobs/grid", headers=AUTH, json={"input": {"path": str(src)}, "classes": "water; grass",
                                                                "cell_m": 40, "mask_wkt": square})
        assert grid.status_code == 202, grid.text
        status = wait_for(client, grid.json()["id"])
        summary = client.get(f"/v1/jobs/{grid.json()['id']}/files/result_grid_summary.json", headers=AUTH).json()
        assert status["state"] == "done" and summary["cells"] == 4  # 50 m square on a 40 m grid from 0
        away = square.replace("5000", "6000")  # 100 km east
        refused = client.post("/v1/jobs/search", headers=AUTH,
                              json={"input": {"path": str(src)}, "query": "a lake", "mask_wkt": away})
        assert refused.status_code == 400 and "mask" in refused.json()["detail"]
        lonely = client.post("/v1/jobs/grid", headers=AUTH, json={"input": {"path": str(src)}, "classes": "a; b",
                                                                  "cell_m": 40, "mask_crs": "EPSG:4326"})
        assert lonely.status_code == 400 and "mask_crs given without mask_wkt" in lonely.json()["detail"]


def test_cells_in_metres_on_a_raster_without_ground_size_say_why(tmp_path, classifier):
    from rasterio.control import GroundControlPoint

    plain = write_raster(tmp_path / "plain.tif", scene(64, 64)[0], crs=None)
    placed = tmp_path / "gcps.tif"
    with rasterio.open(placed, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8") as ds:
        ds.write(scene(64, 64)[0])
        ds.gcps = ([GroundControlPoint(r, c, 500000.0 + c, 5200000.0 - r) for r, c in ((0, 0), (0, 64), (64, 0))],
                   rasterio.crs.CRS.from_epsg(32633))
    for path, why in ((plain, "the raster has no CRS"), (placed, "is placed by 3 ground control points only")):
        with pytest.raises(InputError, match=f"{why}.*give the cell size in pixels"):
            classify_grid(GridJob(str(path), str(tmp_path / "out"), cell_m=10.0), classifier)


@pytest.mark.parametrize("size", [dict(cell_m=float("nan")), dict(cell_m=float("inf")), dict(cell_px=float("nan")),
                                  dict(cell_px=float("inf"))], ids=["nan m", "inf m", "nan px", "inf px"])
def test_a_cell_size_that_is_no_number_is_refused(tmp_path, classifier, size):
    """NaN passed every check and ended in a traceback; inf made one cell and wrote Infinity into the summary."""
    src = write_raster(tmp_path / "in.tif", scene(64, 64)[0])
    with pytest.raises(InputError, match="finite"):
        classify_grid(GridJob(str(src), str(tmp_path / "out"), **size), classifier)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_working_grid_of_a_few_pixels_is_warned_about(tmp_path):
    src = write_raster(tmp_path / "in.tif", scene(512, 512)[0], res=0.5)
    with RasterSource(src, gsd=10000.0) as coarse, RasterSource(src, gsd=2.0) as fine:
        assert (coarse.grid.height, coarse.grid.width) == (1, 1)
        assert any("1 × 1 working pixels: the model sees next to nothing" in n for n in coarse.notes)
        assert not any("next to nothing" in n for n in fine.notes)
