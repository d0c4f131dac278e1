"""Rotated and south-up geo-transforms: the pixel size comes from the transform's column vectors
(no needless down-sampling), areas from the true pixel area (|det|), 90° works, and every output
keeps the source transform, its polygons on the pixels they describe."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine

from engine.dense import Segmenter
from engine.geo.pipeline import RasterJob, segment_raster
from tests.engine.rasters import scene, write_raster

H, W, RES = 100, 130, 0.5
ORIGIN = (500000.0, 5200000.0)
GRIDS = {
    "north-up": Affine.translation(*ORIGIN) @ Affine.scale(RES, -RES),
    "rotated-30": Affine.translation(*ORIGIN) @ Affine.rotation(30) @ Affine.scale(RES, -RES),
    "rotated-90": Affine.translation(*ORIGIN) @ Affine.rotation(90) @ Affine.scale(RES, -RES),
    "south-up": Affine.translation(ORIGIN[0], ORIGIN[1] - H * RES) @ Affine.scale(RES, RES),
}


@pytest.fixture(scope="module")
def segmenter(tiny_model):
    return Segmenter(tiny_model, "water; grass; building; road")


@pytest.mark.parametrize("grid", GRIDS, ids=list(GRIDS))
def test_a_rotated_grid_keeps_its_resolution_area_and_transform(tmp_path, segmenter, grid):
    transform = GRIDS[grid]
    src = write_raster(tmp_path / "in.tif", scene(H, W, seed=5)[0], transform=transform)
    summary = segment_raster(RasterJob(str(src), str(tmp_path / "out"), scores=True, simplify=0.0), segmenter)
    assert summary["source_gsd_m"] == pytest.approx(RES)
    assert summary["working_size"] == [W, H]  # 0.5 m is the working resolution: nothing resampled
    assert sum(c["area_m2"] for c in summary["classes"]) == pytest.approx(H * W * RES * RES)
    for product in ("in_classes.tif", "in_scores.tif"):
        with rasterio.open(tmp_path / "out" / product) as ds:
            assert ds.transform.almost_equals(transform) and (ds.width, ds.height) == (W, H)
    with rasterio.open(tmp_path / "out" / "in_classes.tif") as ds:
        labels = ds.read(1)

    from pyogrio.raw import read

    meta, _, geometry, fields = read(tmp_path / "out" / "in_polygons.gpkg")
    fields = dict(zip(meta["fields"], fields))
    geoms = shapely.from_wkb(geometry)
    assert np.nansum(fields["area_m2"]) == pytest.approx(H * W * RES * RES)
    tree = shapely.STRtree(geoms)
    rng = np.random.default_rng(1)
    for r, c in zip(rng.integers(0, H, 40), rng.integers(0, W, 40)):  # each pixel centre lies in its class
        hits = tree.query(shapely.Point(transform @ (c + 0.5, r + 0.5)), predicate="within")
        assert len(hits) == 1 and fields["class_index"][hits[0]] == labels[r, c]


def test_a_rotated_grid_is_resampled_to_the_asked_resolution(tmp_path, segmenter):
    src = write_raster(tmp_path / "in.tif", scene(H, W, seed=5)[0], transform=GRIDS["rotated-30"])
    summary = segment_raster(RasterJob(str(src), str(tmp_path / "out"), gsd=1.0), segmenter)
    assert summary["working_size"] == [W // 2, H // 2]
    with rasterio.open(tmp_path / "out" / "in_classes.tif") as ds:
        assert ds.transform.almost_equals(GRIDS["rotated-30"])


def test_segment_batch_takes_a_rotated_raster_beside_a_north_up_one(tmp_path):
    import json

    import torch

    from engine.cli import main
    from tests.engine.conftest import TINY, make_clip

    checkpoint = tmp_path / "tiny.pt"
    torch.save({"epoch": 1, "name": "tiny", "state_dict": make_clip().state_dict()}, checkpoint)
    rotated = write_raster(tmp_path / "rotated.tif", scene(H, W, seed=5)[0], transform=GRIDS["rotated-90"])
    plain = write_raster(tmp_path / "plain.tif", scene(H, W, seed=6)[0], transform=GRIDS["north-up"])
    out = tmp_path / "out"
    assert main(["segment-batch", str(rotated), str(plain), "--classes", "water; grass", "-o", str(out),
                 "--model", str(checkpoint), "--arch", TINY, "-q"]) == 0
    summary = json.loads((out / "batch_summary.json").read_text())
    assert summary["done"] == 2
    assert sum(summary["area_m2_per_class"].values()) == pytest.approx(2 * H * W * RES * RES)
    with rasterio.open(out / "mosaic_classes.vrt") as mosaic, rasterio.open(out / "plain_classes.tif") as ds:
        assert mosaic.transform.almost_equals(ds.transform)  # the mosaic holds the north-up raster
