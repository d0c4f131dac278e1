"""`segment` into a folder holding an earlier run's outputs: refused unless overwrite, and with it one
name never holds outputs of two runs (e.g. old polygons beside a new --no-polygons class map)."""

from __future__ import annotations

import json

import pytest
import rasterio

from engine.dense import Segmenter
from engine.errors import InputError
from engine.geo.pipeline import RasterJob, segment_raster
from tests.engine.rasters import scene, write_raster


@pytest.fixture(scope="module")
def segmenters(tiny_model):
    return Segmenter(tiny_model, "water; grass"), Segmenter(tiny_model, "building; road; tree")


def _names(out):
    with rasterio.open(out / "in_classes.tif") as ds:
        return [c["name"] for c in json.loads(ds.tags()["FARSLIP_CLASSES"])]


def test_a_second_run_into_the_same_folder_is_refused_and_nothing_changes(tmp_path, segmenters):
    first, second = segmenters
    src = write_raster(tmp_path / "in.tif", scene(80, 100)[0])
    out = tmp_path / "out"
    segment_raster(RasterJob(str(src), str(out), scores=True), first)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(InputError, match=r"in_classes.tif and the other outputs of an earlier run .* --overwrite"):
        segment_raster(RasterJob(str(src), str(out), polygons=False), second)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    segment_raster(RasterJob(str(src), str(out), name="other"), second)  # another name is another run
    assert (out / "other_classes.tif").exists()


def test_overwrite_replaces_every_output_of_the_earlier_run(tmp_path, segmenters):
    first, second = segmenters
    src = write_raster(tmp_path / "in.tif", scene(80, 100)[0])
    out = tmp_path / "out"
    segment_raster(RasterJob(str(src), str(out), scores=True), first)
    summary = segment_raster(RasterJob(str(src), str(out), polygons=False, overwrite=True), second)
    assert _names(out) == ["building", "road", "tree"]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["in_classes.tif",
                                                                                   "in_summary.json"]
    assert json.loads((out / "in_summary.json").read_text())["prompts"] == summary["prompts"]
