"""NaN and ±inf pixels of floating-point rasters are nodata, always, beside GDAL's mask (a declared
nodata value, alpha, internal masks): they get no class, no polygon and no area."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from engine.dense import Segmenter
from engine.geo.pipeline import RasterJob, segment_raster
from tests.engine.rasters import scene, write_raster


@pytest.fixture(scope="module")
def segmenter(tiny_model):
    return Segmenter(tiny_model, "water; grass; building; road")


def _float_scene(h, w):
    data = scene(h, w, seed=4)[0].astype(np.float32) * 11.0 + 300.0  # reflectance-like floats
    blank = np.zeros((h, w), dtype=bool)
    data[:, 10:40, 20:70] = np.nan          # a NaN block
    blank[10:40, 20:70] = True
    data[0, 60, 5], data[2, 61, 6] = np.inf, -np.inf  # ±inf in one band is enough
    blank[60, 5] = blank[61, 6] = True
    data[:, -8:, :] = -9999.0                # the declared nodata value
    blank[-8:, :] = True
    return data, blank


@pytest.mark.parametrize("gsd", [None, 1.0], ids=["native", "resampled"])
def test_nan_and_inf_pixels_get_no_class(tmp_path, segmenter, gsd):
    h, w = 120, 150
    data, blank = _float_scene(h, w)
    src = write_raster(tmp_path / "float.tif", data, nodata=-9999.0)
    summary = segment_raster(RasterJob(str(src), str(tmp_path / "out"), gsd=gsd, simplify=0.0), segmenter)
    with rasterio.open(tmp_path / "out" / "float_classes.tif") as ds:
        labels = ds.read(1)
    if gsd is None:
        assert np.array_equal(labels == 255, blank)
        assert summary["nodata_pixels"] == blank.sum()
    else:  # resampled: whole working pixels inside the blank areas are nodata, the rest classified
        assert np.all(labels[12:38, 22:68] == 255) and np.all(labels[-6:] == 255)
        assert (labels[:100, 80:] != 255).all()
    assert sum(c["pixels"] for c in summary["classes"]) == (labels != 255).sum()
    assert sum(c["area_m2"] for c in summary["classes"]) == pytest.approx((labels != 255).sum() * 0.25)


@pytest.mark.parametrize("gsd", [None, 1.0], ids=["native", "resampled"])
def test_a_blocks_validity_cut_from_its_read_equals_reading_it(tmp_path, gsd):
    """A block's validity is cut from the validity of the larger rectangle read for its crops (native
    grid) or read again (resampled grid): either way what reading the block itself gives."""
    from engine.boxes import Box
    from engine.geo.source import RasterSource

    data, _ = _float_scene(120, 150)
    src = write_raster(tmp_path / "float.tif", data, nodata=-9999.0)
    with RasterSource(str(src), gsd=gsd, nodata=300.0) as source:
        grid = source.grid
        extent = Box(3, 5, grid.height - 3, grid.width - 5)
        _, ok = source.read_pixels(extent)
        assert not ok.all()
        for rect in (Box(3, 5, 50, 60), Box(40, 50, grid.height - 40, grid.width - 50), extent):
            assert np.array_equal(source.read_valid(rect, (extent, ok)), source.read_valid(rect))


def test_a_raster_with_no_data_anywhere_says_so(tmp_path, tiny_model):
    src = write_raster(tmp_path / "empty.tif", np.full((3, 80, 80), np.nan, np.float32))
    summary = segment_raster(RasterJob(str(src), str(tmp_path / "out")), Segmenter(tiny_model, "water; grass"))
    assert summary["nodata_pixels"] == 80 * 80 and summary["polygons"] == 0
    assert sum("no pixel of the area got a class" in note for note in summary["notes"]) == 1
