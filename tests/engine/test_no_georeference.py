"""Rasters without geo-reference (a PNG tile, a plain TIFF): outputs overlay the input in QGIS.

GDAL has no geotransform for such a raster and QGIS draws it with x = column, y = -row (y from 0 down
to -H). The class raster then carries no geotransform either (QGIS and GDAL place it exactly on the
input), a window of it gets that frame explicitly, and polygons use the same frame."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning

from engine.dense import Segmenter
from engine.geo.pipeline import RasterJob, segment_raster
from engine.geo.source import RasterSource
from tests.engine.rasters import scene

H, W = 90, 120


@pytest.fixture(scope="module")
def segmenter(tiny_model):
    return Segmenter(tiny_model, "water; grass; building; road")


@pytest.fixture
def png(tmp_path):
    path = tmp_path / "tile.png"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver="PNG", width=W, height=H, count=3, dtype="uint8") as ds:
            ds.write(scene(H, W, seed=2)[0])
    return path


def _has_geotransform(path) -> bool:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with rasterio.open(path) as ds:
            ds.transform
    return not any(issubclass(w.category, NotGeoreferencedWarning) for w in caught)


def _polygons(path):
    from pyogrio.raw import read

    meta, _, geometry, fields = read(path)
    return shapely.from_wkb(geometry), dict(zip(meta["fields"], fields))


def _assert_polygons_overlay(labels, polygons_path, col0=0, row0=0, samples=60):
    """The polygon under each sampled pixel's centre, in QGIS's frame, carries that pixel's class."""
    geoms, fields = _polygons(polygons_path)
    h, w = labels.shape
    assert shapely.box(col0, -(row0 + h), col0 + w, -row0).buffer(1e-9).contains(shapely.union_all(geoms))
    tree = shapely.STRtree(geoms)
    rng = np.random.default_rng(0)
    for r, c in zip(rng.integers(0, h, samples), rng.integers(0, w, samples)):
        hits = tree.query(shapely.Point(col0 + c + 0.5, -(row0 + r + 0.5)), predicate="within")
        assert len(hits) == 1 and fields["class_index"][hits[0]] == labels[r, c]


def test_outputs_of_a_png_tile_carry_its_absent_georeference(tmp_path, segmenter, png):
    summary = segment_raster(RasterJob(str(png), str(tmp_path / "out"), scores=True, simplify=0.0), segmenter)
    assert not _has_geotransform(png)
    for product in ("tile_classes.tif", "tile_scores.tif"):
        assert not _has_geotransform(tmp_path / "out" / product), f"{product} got a geotransform the input lacks"
    with rasterio.open(tmp_path / "out" / "tile_classes.tif") as ds:
        assert (ds.width, ds.height) == (W, H) and ds.crs is None
        labels = ds.read(1)
    _assert_polygons_overlay(labels, tmp_path / "out" / "tile_polygons.gpkg")
    assert summary["bounds"] == [0, -H, W, 0]


def test_a_window_of_a_png_tile_is_placed_where_qgis_draws_it(tmp_path, segmenter, png):
    job = RasterJob(str(png), str(tmp_path / "out"), window=(10, 20, 70, 50), simplify=0.0)
    segment_raster(job, segmenter)
    with rasterio.open(tmp_path / "out" / "tile_classes.tif") as ds:
        assert ds.transform == Affine(1, 0, 10, 0, -1, -20)
        labels = ds.read(1)
    _assert_polygons_overlay(labels, tmp_path / "out" / "tile_polygons.gpkg", col0=10, row0=20)


def test_a_bbox_on_a_png_tile_is_in_qgis_pixel_space(png):
    with RasterSource(png, bbox=(10, -60, 80, -20)) as source:  # as read off QGIS's canvas
        w = source.window
        assert (w.col_off, w.row_off, w.width, w.height) == (10, 20, 70, 40)


def test_regions_drawn_over_a_png_tile_in_qgis_are_labelled_where_they_are(tmp_path, png, tiny_model):
    import torch

    from engine.cli import main
    from engine.dense.scenes import SceneClassifier
    from engine.geo.regions import Region
    from engine.geo.scenes import label_regions
    from engine.geo.vectors import write_features
    from tests.engine.conftest import TINY, make_clip

    boxes = [shapely.box(5, -60, 45, -20), shapely.box(60, -85, 110, -40)]  # as drawn on QGIS's canvas
    regions = tmp_path / "drawn.gpkg"
    write_features(regions, boxes, {"id": np.array([1, 2], dtype=np.int32)}, None, "drawn")
    checkpoint = tmp_path / "tiny.pt"
    torch.save({"epoch": 1, "name": "tiny", "state_dict": make_clip().state_dict()}, checkpoint)
    classes = "water; grass; building; road"
    assert main(["classify", str(png), "--classes", classes, "--regions", str(regions), "-o", str(tmp_path / "out"),
                 "--model", str(checkpoint), "--arch", TINY, "-q"]) == 0
    from pyogrio.raw import read

    meta, _, _, columns = read(tmp_path / "out" / "drawn_labels.gpkg")
    got = dict(zip(meta["fields"], columns))
    with RasterSource(png) as source:  # the same boxes in (column, row)
        want = label_regions(source, [Region(bbox=(5, 20, 45, 60)), Region(bbox=(60, 40, 110, 85))],
                             SceneClassifier(tiny_model, classes), crs="pixel")
    assert list(got["class"]) == [w["best"] for w in want]
    assert list(got["score"]) == pytest.approx([w["score"] for w in want], abs=1e-5)
