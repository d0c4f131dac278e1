"""Segmenting GeoTIFFs: geo-reference kept, pieces equal the whole, nodata, bands, stretch, outputs."""

from __future__ import annotations

import json
import sqlite3
import threading

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
import torch
import torch.nn.functional as F
from rasterio.enums import ColorInterp
from rasterio.features import geometry_mask

from engine.dense import Segmenter, prepare_image
from engine.dense.forward import dense_features
from engine.geo.pipeline import Cancelled, RasterJob, segment_raster
from engine.geo.source import RasterSource
from tests.engine.rasters import scene, write_raster

CLASSES = "water,river; grass; building,roof; road"


@pytest.fixture(scope="module")
def segmenter(tiny_model):
    return Segmenter(tiny_model, CLASSES)


def _run(segmenter, path, out, **kw):
    return segment_raster(RasterJob(str(path), str(out), **kw), segmenter)


def _same_grid(a, b):
    with rasterio.open(a) as x, rasterio.open(b) as y:
        assert x.crs == y.crs
        assert x.transform.almost_equals(y.transform)
        assert (x.width, x.height) == (y.width, y.height)


@pytest.mark.parametrize("crs, res, gsd", [("EPSG:32633", 0.5, None), ("EPSG:32633", 0.25, 0.4),
                                           ("EPSG:4326", 0.000005, None)],
                         ids=["utm-native", "utm-resampled", "geographic"])
def test_every_output_keeps_the_source_grid(tmp_path, segmenter, crs, res, gsd):
    origin = (13.4, 52.5) if crs == "EPSG:4326" else (500000.0, 5200000.0)
    src = write_raster(tmp_path / "in.tif", scene(301, 457)[0], crs=crs, res=res, origin=origin)
    summary = _run(segmenter, src, tmp_path / "out", scores=True, gsd=gsd)
    out = tmp_path / "out"
    _same_grid(src, out / "in_classes.tif")
    _same_grid(src, out / "in_scores.tif")
    with rasterio.open(out / "in_classes.tif") as cls:
        assert cls.dtypes[0] == "uint8" and cls.nodata == 255
        assert cls.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        names = [c["name"] for c in json.loads(cls.tags()["FARSLIP_CLASSES"])]
        assert names == ["water", "grass", "building", "road"]
        assert cls.colormap(1)[0][:3] == (30, 100, 220)  # water is blue in every run
    with rasterio.open(src) as s:
        assert summary["bounds"] == pytest.approx(list(s.bounds))
    info = pyogrio.read_info(out / "in_polygons.gpkg")
    assert rasterio.crs.CRS.from_user_input(info["crs"]) == rasterio.crs.CRS.from_user_input(crs)
    if gsd:
        assert summary["working_gsd_m"] == pytest.approx(0.4) and summary["working_size"][0] < 457


@pytest.mark.parametrize("classes", ["water; grass; road", CLASSES, "water; grass; building; road; tree"],
                         ids=["3 classes", "4 classes", "5 classes"])
def test_score_bands_open_as_one_grey_band_per_class(tmp_path, tiny_model, classes):
    """Three or four uint8 bands are RGB(A) to GDAL unless told otherwise: QGIS would draw three classes'
    scores as a colour composite and take the fourth as transparency."""
    from rasterio.enums import ColorInterp

    src = write_raster(tmp_path / "in.tif", scene(600, 600)[0])  # overviews too (above one 512 px tile)
    _run(Segmenter(tiny_model, classes), src, tmp_path / "out", scores=True)
    with rasterio.open(tmp_path / "out" / "in_scores.tif") as ds:
        assert ds.colorinterp[0] == ColorInterp.gray and set(ds.colorinterp[1:]) == {ColorInterp.undefined}
        assert ds.overviews(1) and ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert list(ds.descriptions) == [c.label for c in Segmenter(tiny_model, classes).prompts.classes]


@pytest.mark.parametrize("flush_bytes", [64 * 2**20, 2000], ids=["one write", "appended"])
def test_polygons_are_valid_inside_the_raster_and_add_up(tmp_path, segmenter, monkeypatch, flush_bytes):
    monkeypatch.setattr("engine.geo.polygons.FLUSH_BYTES", flush_bytes)
    src = write_raster(tmp_path / "in.tif", scene(400, 700)[0])
    summary = _run(segmenter, src, tmp_path / "out", simplify=0.0, block=256)
    geoms, fields = _read_polygons(tmp_path / "out" / "in_polygons.gpkg")
    with sqlite3.connect(tmp_path / "out" / "in_polygons.gpkg") as gpkg:  # QGIS finds them by the spatial index
        assert gpkg.execute("SELECT count(*) FROM rtree_polygons_geom").fetchone()[0] == len(geoms)
    with rasterio.open(src) as s:
        bounds = shapely.box(*s.bounds)
    assert len(geoms) == summary["polygons"] > 0
    assert all(g.is_valid for g in geoms)
    assert all(bounds.buffer(1e-6).contains(g) for g in geoms)
    assert np.all((fields["score"] >= 0) & (fields["score"] <= 1))
    for c in summary["classes"]:  # unsimplified polygons cover exactly the class's pixels
        total = fields["area_m2"][fields["class_index"] == c["index"]].sum()
        assert total == pytest.approx(c["area_m2"], rel=1e-6, abs=1e-6)
        assert c["area_m2"] == pytest.approx(c["pixels"] * 0.25)
    # a region crossing block borders is one polygon, not one per block
    assert len(geoms) < 4 * len(summary["classes"]) * (400 // 256 + 1) * (700 // 256 + 1)


def _read_polygons(path):
    from pyogrio.raw import read

    meta, _, geometry, field_data = read(path)
    geoms = shapely.from_wkb(geometry)
    return geoms, dict(zip(meta["fields"], field_data))


@pytest.mark.parametrize("gsd", [None, 0.35], ids=["native", "resampled"])
def test_many_blocks_give_the_same_result_as_one(tmp_path, segmenter, gsd):
    src = write_raster(tmp_path / "in.tif", scene(530, 610, seed=3)[0], res=0.25)
    whole = _run(segmenter, src, tmp_path / "whole", block=4096, scores=True, gsd=gsd, simplify=0.0)
    tiled = _run(segmenter, src, tmp_path / "tiled", block=256, scores=True, gsd=gsd, simplify=0.0)
    with rasterio.open(tmp_path / "whole" / "in_scores.tif") as a, rasterio.open(tmp_path / "tiled" / "in_scores.tif") as b:
        sa, sb = a.read().astype(int), b.read().astype(int)
    assert np.abs(sa - sb).max() <= 1  # probabilities agree to the uint8 step (float summation order)
    with rasterio.open(tmp_path / "whole" / "in_classes.tif") as a, rasterio.open(tmp_path / "tiled" / "in_classes.tif") as b:
        ca, cb = a.read(1), b.read(1)
    top2 = np.sort(sa, axis=0)[-2:]
    clear = (top2[1] - top2[0]) > 2  # pixels not at a near-tie between two classes
    assert np.array_equal(ca[clear], cb[clear])
    assert (ca != cb).mean() < 1e-3
    assert [c["pixels"] for c in whole["classes"]] == pytest.approx([c["pixels"] for c in tiled["classes"]], abs=50)


def test_nodata_border_gets_no_prediction(tmp_path, segmenter):
    rgb, _ = scene(300, 300)
    rgb = rgb.astype(np.uint16) * 40 + 100
    nir = np.full((1, 300, 300), 60000, dtype=np.uint16)
    data = np.concatenate([rgb, nir])
    data[:, :20, :] = 0
    data[:, :, -35:] = 0
    src = write_raster(tmp_path / "rgbn.tif", data, nodata=0)
    summary = _run(segmenter, src, tmp_path / "out", scores=True)
    with rasterio.open(tmp_path / "out" / "rgbn_classes.tif") as cls:
        labels = cls.read(1)
    assert np.all(labels[:20] == 255) and np.all(labels[:, -35:] == 255)
    assert np.all(labels[20:, :-35] != 255)
    assert summary["nodata_pixels"] == 300 * 300 - 280 * 265
    assert summary["bands"] == [1, 2, 3]  # NIR is never read as blue


@pytest.mark.parametrize("kind", ["nodata value", "alpha band", "alpha band first", "NaN", "mask polygon"])
@pytest.mark.parametrize("gsd", [None, 0.73], ids=["default-0.5", "gsd-0.73"])
def test_no_data_is_the_sources_own_at_a_working_resolution(tmp_path, segmenter, kind, gsd):
    """0.2 m pixels read at 0.5 m (or 0.73 m): the outputs' no data is exactly the source's pixels — isolated
    dead pixels, a ragged edge, a polygon's outline — not that of the working pixels put back."""
    rng = np.random.default_rng(3)
    h, w = 233, 251
    invalid = np.zeros((h, w), bool)
    invalid[rng.integers(0, h, 40), rng.integers(0, w, 40)] = True  # dead pixels
    invalid[:, :17] = True
    invalid[np.arange(h), np.minimum(17 + np.arange(h) // 3, w - 1)] = True  # a ragged edge
    rgb = np.maximum(scene(h, w, seed=4)[0], 1)
    mask_wkt = None
    if kind == "nodata value":
        src = write_raster(tmp_path / "in.tif", np.where(invalid, 0, rgb).astype(np.uint8), nodata=0, res=0.2)
    elif kind == "alpha band":
        alpha = np.where(invalid, 0, 255).astype(np.uint8)[None]
        src = write_raster(tmp_path / "in.tif", np.concatenate([rgb, alpha]), res=0.2,
                           colorinterp=[ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha])
    elif kind == "alpha band first":  # ARGB: GDAL's masks do not use an alpha band that is not the last
        alpha = np.where(invalid, 0, 255).astype(np.uint8)[None]
        src = write_raster(tmp_path / "in.tif", np.concatenate([alpha, rgb]), res=0.2,
                           colorinterp=[ColorInterp.alpha, ColorInterp.red, ColorInterp.green, ColorInterp.blue])
    elif kind == "NaN":
        src = write_raster(tmp_path / "in.tif", np.where(invalid, np.nan, rgb / 255).astype(np.float32), res=0.2)
    else:  # a triangle over the whole raster: no data outside it, by pixel centre as GDAL rasterizes
        src = write_raster(tmp_path / "in.tif", rgb, res=0.2)
        with rasterio.open(src) as ds:
            x0, y0, x1, y1 = ds.bounds
            triangle = shapely.Polygon([(x0 + 3.3, y0 + 2.1), (x1 - 1.7, y0 + 9.9), (x0 + 20.1, y1 - 0.9)])
            invalid = geometry_mask([triangle], out_shape=(h, w), transform=ds.transform)
        mask_wkt = triangle.wkt
    summary = _run(segmenter, src, tmp_path / "out", gsd=gsd, mask_wkt=mask_wkt, polygons=False)
    assert summary["working_gsd_m"] == (gsd or 0.5)
    with rasterio.open(tmp_path / "out" / "in_classes.tif") as cls, rasterio.open(src) as ds:
        labels = cls.read(1)
        col, row = (~ds.transform) @ (cls.transform.c, cls.transform.f)  # a mask: only its bounding box
        invalid = invalid[round(row):round(row) + cls.height, round(col):round(col) + cls.width]
    assert np.array_equal(labels == 255, invalid)
    assert summary["nodata_pixels"] == int(invalid.sum())


def test_colour_interpretation_picks_rgb_out_of_bgrn(tmp_path):
    data = np.zeros((4, 40, 40), dtype=np.uint8)
    path = write_raster(tmp_path / "bgrn.tif", data, colorinterp=[ColorInterp.blue, ColorInterp.green,
                                                                   ColorInterp.red, ColorInterp.undefined])
    with RasterSource(path) as source:
        assert source.bands == (3, 2, 1)


def test_sixteen_bit_is_stretched_once_for_the_whole_raster(tmp_path):
    rgb, _ = scene(200, 300)
    data = (rgb.astype(np.uint16) * 16 + 500)
    data[:, 150:, 250:] = 9000  # a bright corner: a per-tile stretch would change the other tiles
    path = write_raster(tmp_path / "u16.tif", data)
    with RasterSource(path) as source:
        whole, _ = source.read_rgb(source_box(source))
        from engine.boxes import Box

        piece, _ = source.read_rgb(Box(0, 0, 100, 120))
    np.testing.assert_array_equal(piece, whole[:100, :120])
    assert 0.0 <= whole.min() and whole.max() <= 1.0
    assert whole[:100, :120].std() > 0.05  # the stretch keeps contrast outside the bright corner


def source_box(source):
    from engine.boxes import Box

    return Box(0, 0, source.grid.height, source.grid.width)


def test_classes_come_out_right_on_a_known_scene(tmp_path, tiny_model):
    """With class embeddings taken from example pixels (a stand-in for a trained model's text side),
    the pipeline puts every class where it is on the map: no flips, shifts or mixed-up bands."""
    rgb, labels = scene(320, 480, seed=5)
    segmenter = Segmenter(tiny_model, CLASSES)
    with torch.no_grad():
        feats = F.normalize(dense_features(tiny_model.clip.visual, prepare_image(rgb.transpose(1, 2, 0))[None])[0], dim=-1)
    grid_labels = labels[8::16, 8::16]  # label at each patch centre
    order = [0, 1, 2, 3]  # water, grass, roof(building), road
    prototypes = torch.stack([F.normalize(feats[torch.as_tensor(grid_labels == k)].mean(0), dim=0) for k in order])
    segmenter.text = prototypes[segmenter.prompts.name_to_class]  # every synonym of a class alike
    src = write_raster(tmp_path / "scene.tif", scene(320, 480, seed=6)[0])
    _run(segmenter, src, tmp_path / "out", block=256)
    with rasterio.open(tmp_path / "out" / "scene_classes.tif") as cls:
        got = cls.read(1)
    core = (slice(30, 290), slice(30, 450))
    agreement = (got[core] == labels[core]).mean()
    assert agreement > 0.8, agreement  # measured 0.86 (a flipped or shifted map scores far lower)
    for k in (0, 1, 2):  # water, grass and the roofs each found where they are (road is 2 patches thin)
        recall = (got[core][labels[core] == k] == k).mean()
        assert recall > 0.6, (k, recall)
    assert np.bincount(got[:, :150].ravel(), minlength=4).argmax() == 0  # water in the west


def test_cancel_and_interrupt_leave_nothing_behind(tmp_path, segmenter):
    src = write_raster(tmp_path / "in.tif", scene(500, 500)[0])
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("a user's file")
    stop = threading.Event()

    def progress(done, total):
        if done >= 4:
            stop.set()

    with pytest.raises(Cancelled):
        segment_raster(RasterJob(str(src), str(out), block=256), segmenter, progress=progress, cancel=stop)

    def interrupt(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        segment_raster(RasterJob(str(src), str(out), block=256), segmenter, progress=interrupt)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_a_raster_smaller_than_one_crop(tmp_path, segmenter):
    src = write_raster(tmp_path / "small.tif", scene(223, 223)[0])
    summary = _run(segmenter, src, tmp_path / "out")
    assert sum(c["pixels"] for c in summary["classes"]) == 223 * 223
    _same_grid(src, tmp_path / "out" / "small_classes.tif")


def test_window_and_bbox_process_only_part(tmp_path, segmenter):
    src = write_raster(tmp_path / "in.tif", scene(400, 400)[0], crs="EPSG:32633")
    summary = _run(segmenter, src, tmp_path / "w", window=(100, 50, 230, 240))
    with rasterio.open(src) as s, rasterio.open(tmp_path / "w" / "in_classes.tif") as out:
        assert (out.width, out.height) == (230, 240)
        assert out.transform.almost_equals(s.window_transform(rasterio.windows.Window(100, 50, 230, 240)))
    # the same area as a bbox in EPSG:4326
    from rasterio.warp import transform_bounds

    with rasterio.open(src) as s:
        b = rasterio.windows.bounds(rasterio.windows.Window(100, 50, 230, 240), s.transform)
    lonlat = transform_bounds("EPSG:32633", "EPSG:4326", *[b[0] + 0.1, b[1] + 0.1, b[2] - 0.1, b[3] - 0.1])
    summary = _run(segmenter, src, tmp_path / "b", bbox=lonlat, bbox_crs="EPSG:4326")
    assert summary["window"][2] >= 230 and summary["window"][3] >= 240


def test_a_bbox_on_pixel_edges_in_another_crs_gives_exactly_those_pixels(tmp_path):
    """The box QGIS shows in EPSG:4326 for 200 x 300 pixels of a Web Mercator raster: those pixels, not a
    row more (the CRS round trip puts its edges a few billionths of a pixel off)."""
    from rasterio.transform import from_origin
    from rasterio.warp import transform_bounds

    transform = from_origin(1113194.9, 6800125.45, 0.3, 0.3)
    src = write_raster(tmp_path / "mercator.tif", scene(800, 1000)[0], crs="EPSG:3857", transform=transform)
    x0, y1 = transform * (100, 200)
    x1, y0 = transform * (300, 500)
    with RasterSource(src, bbox=transform_bounds("EPSG:3857", "EPSG:4326", x0, y0, x1, y1),
                      bbox_crs="EPSG:4326") as source:
        assert tuple(source.window.flatten()) == (100, 200, 200, 300)


def test_alpha_band_masks_the_prediction(tmp_path, segmenter):
    rgb, _ = scene(200, 260)
    alpha = np.full((1, 200, 260), 255, dtype=np.uint8)
    alpha[:, 120:, :90] = 0
    src = write_raster(tmp_path / "rgba.tif", np.concatenate([rgb, alpha]),
                       colorinterp=[ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha])
    summary = _run(segmenter, src, tmp_path / "out")
    with rasterio.open(tmp_path / "out" / "rgba_classes.tif") as cls:
        labels = cls.read(1)
    assert np.all(labels[120:, :90] == 255) and np.all(labels[:120] != 255)
    assert summary["nodata_pixels"] == 80 * 90


def test_min_area_drops_small_polygons(tmp_path, segmenter):
    src = write_raster(tmp_path / "in.tif", scene(300, 400)[0])
    _run(segmenter, src, tmp_path / "all", simplify=0.0)
    _run(segmenter, src, tmp_path / "big", simplify=0.0, min_area=200.0)
    _, all_fields = _read_polygons(tmp_path / "all" / "in_polygons.gpkg")
    _, big_fields = _read_polygons(tmp_path / "big" / "in_polygons.gpkg")
    assert big_fields["area_m2"].min() >= 200.0
    assert len(big_fields["area_m2"]) == int((all_fields["area_m2"] >= 200.0).sum())


def test_a_mask_polygon_limits_the_prediction(tmp_path, segmenter):
    from rasterio.warp import transform_geom

    src = write_raster(tmp_path / "in.tif", scene(200, 300)[0])  # origin 500000, 5200000, 0.5 m
    square = shapely.box(500020.0, 5199940.0, 500070.0, 5199980.0)  # cols 40-140, rows 40-120
    lonlat = shapely.geometry.shape(transform_geom("EPSG:32633", "EPSG:4326", square.__geo_interface__, precision=-1))
    summary = _run(segmenter, src, tmp_path / "out", mask_wkt=lonlat.wkt, mask_crs="EPSG:4326")
    with rasterio.open(tmp_path / "out" / "in_classes.tif") as cls:  # the mask's bounding box, on the raster's grid
        labels = cls.read(1)
        col, row = (~cls.transform) @ (500000.0, 5200000.0)
    assert col == round(col) and row == round(row) and 38 <= -col <= 40 and 38 <= -row <= 40
    square_px = labels[int(-row) - 40:, int(-col) - 40:]  # from col 40, row 40 of the raster
    assert np.all(square_px[2:78, 2:98] != 255)
    assert summary["nodata_pixels"] == pytest.approx(labels.size - 100 * 80, abs=400)


def test_a_bbox_across_the_antimeridian_finds_the_raster(tmp_path):
    """A raster running past 180° (179.999° to 180.0028°, as GDAL writes one crossing it) and a bbox in
    Web Mercator east of 180°, or in longitudes wrapped to −180°: the same pixels, not a 3-column sliver."""
    from pyproj import Transformer
    from rasterio.transform import Affine

    src = write_raster(tmp_path / "fiji.tif", scene(384, 384)[0], crs="EPSG:4326",
                       transform=Affine(0.00001, 0, 179.999, 0, -0.00001, -16.5))
    to_mercator = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True)
    (_, _), (y0, y1) = to_mercator.transform([0, 0], [-16.50373, -16.50087])
    x0, x1 = (lon * 20037508.342789244 / 180 for lon in (179.9991, 180.0017))  # x past 20037508: east of 180°
    with RasterSource(src, bbox=(x0, y0, x1, y1), bbox_crs="EPSG:3857") as source:
        assert abs(source.window.col_off - 10) <= 1 and abs(source.window.width - 260) <= 2, source.window
    with RasterSource(src, bbox=(-180.0009, -16.50373, -179.9983, -16.50087), bbox_crs="EPSG:4326") as source:
        assert abs(source.window.col_off - 10) <= 1 and abs(source.window.width - 260) <= 2, source.window
