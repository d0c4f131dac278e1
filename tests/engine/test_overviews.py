"""Overviews made while a raster is written: the levels GDAL would make, the values of a 2 × 2
majority (classes) or mean (scores) over valid pixels, whatever the rectangles' alignment, and the
published COG carries them."""

from __future__ import annotations

import json
import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from engine.boxes import Box
from engine.dense import Segmenter
from engine.geo.overviews import Pyramid, overview_sizes, reduce_mode
from engine.geo.pipeline import RasterJob, segment_raster
from engine.geo.products import class_counts
from engine.geo.rasters import TiledRaster, publish_cog
from tests.engine.rasters import scene, write_raster

NODATA = 255


def reference(level: np.ndarray, reduction: str) -> np.ndarray:
    """One 2 × 2 reduction counted value by value (odd edges pair with no data)."""
    h, w = level.shape[-2:]
    pad = [(0, 0)] * (level.ndim - 2) + [(0, h % 2), (0, w % 2)]
    level = np.pad(level, pad, constant_values=NODATA)
    groups = np.stack([level[..., 0::2, 0::2], level[..., 0::2, 1::2], level[..., 1::2, 0::2], level[..., 1::2, 1::2]])
    valid = groups != NODATA
    if reduction == "average":
        n = valid.sum(axis=0)
        mean = np.floor(np.where(valid, groups, 0).sum(axis=0) / np.maximum(n, 1) + 0.5)
        return np.where(n > 0, mean, NODATA).astype(np.uint8)
    counts = np.zeros(groups.shape, dtype=np.int64)  # how often each pixel's own value occurs in its group
    for value in np.unique(groups[valid]):
        same = groups == value
        counts += same * same.sum(axis=0)
    counts[~valid] = 0
    first = np.argmax(counts == counts.max(axis=0), axis=0)  # the first of the most frequent, in reading order
    chosen = np.take_along_axis(groups, first[None], axis=0)[0]
    return np.where(counts.max(axis=0) > 0, chosen, NODATA).astype(np.uint8)


def class_map(rng, h, w, classes=5):
    """Patches of classes with scattered pixels of other classes and of no data (ties and no data
    in many 2 × 2 groups)."""
    patches = np.kron(rng.integers(0, classes, (h // 7 + 1, w // 7 + 1)), np.ones((7, 7)))[:h, :w]
    noise = rng.random((h, w))
    values = np.where(noise < 0.25, rng.integers(0, classes, (h, w)), patches)
    values[noise > 0.93] = NODATA
    values[: h // 5, : w // 4] = NODATA
    return values.astype(np.uint8)


def cuts(length: int, rng) -> list[int]:
    """A partition of [0, length) into pieces of odd and even sizes."""
    edges, pos = [0], 0
    while pos < length:
        pos = min(length, pos + int(rng.integers(1, 90)))
        edges.append(pos)
    return edges


@pytest.mark.parametrize("values", [(0, 1, 2), (0, 1, 2, NODATA)], ids=["classes", "with no data"])
def test_the_class_majority_of_every_possible_2x2_group(values):
    """Every group of four of these values: the most frequent valid value, the first in reading
    order on a tie, no data only where all four are no data."""
    values = np.array(values, dtype=np.uint8)
    groups = np.array(np.meshgrid(values, values, values, values, indexing="ij")).reshape(4, -1)
    raster = np.zeros((2, 2 * groups.shape[1]), dtype=np.uint8)  # group k: pixels (0..1, 2k..2k+1)
    raster[0, 0::2], raster[0, 1::2], raster[1, 0::2], raster[1, 1::2] = groups
    reduced = reduce_mode(torch.from_numpy(raster)[None], NODATA)[0].numpy()
    assert np.array_equal(reduced, reference(raster, "mode"))
    assert (reduced == NODATA).sum() == (groups == NODATA).all(axis=0).sum()


@pytest.mark.parametrize("reduction", ["mode", "average"])
def test_every_level_equals_the_reduction_of_the_whole_raster_for_any_partition(reduction):
    rng = np.random.default_rng(7)
    h, w = 1203, 1101  # odd sides: three levels, the last groups pair with nothing
    bands = 1 if reduction == "mode" else 2
    data = (np.stack([class_map(rng, h, w) for _ in range(bands)]) if reduction == "mode"
            else np.where(rng.random((bands, h, w)) < 0.05, NODATA, rng.integers(0, 255, (bands, h, w))).astype(np.uint8))
    levels = {k: np.full((bands, lh, lw), 77, dtype=np.uint8)
              for k, (lh, lw) in enumerate(overview_sizes(h, w), start=1)}
    assert len(levels) == 2

    def write(level, y, x, block):
        levels[level][:, y:y + block.shape[1], x:x + block.shape[2]] = block

    pyramid = Pyramid(h, w, bands, reduction, write)
    rows, cols = cuts(h, rng), cuts(w, rng)
    for y0, y1 in zip(rows, rows[1:]):  # row-major, rectangles of one band share their rows
        for x0, x1 in zip(cols, cols[1:]):
            pyramid.add(y0, x0, data[:, y0:y1, x0:x1].copy())
    expected = data
    for k in sorted(levels):
        expected = reference(expected, reduction)
        assert np.array_equal(levels[k], expected), f"level {k}"


def test_the_levels_are_those_gdal_makes_and_the_cog_takes_ours(tmp_path):
    rng = np.random.default_rng(3)
    h, w = 1500, 700
    labels = class_map(rng, h, w)
    tif = tmp_path / "classes.tif"
    raster = TiledRaster(tif, h, w, 1, from_origin(500000, 5200000, 0.5, 0.5), "EPSG:32633", ["class"],
                         {"FARSLIP_CLASSES": "[]"}, {0: (255, 0, 0, 255), 1: (0, 0, 255, 255)}, overviews="mode")
    for y in range(0, h, 512):
        for x in range(0, w, 512):
            box = Box(y, x, min(512, h - y), min(512, w - x))
            raster.write(box, labels[y:y + box.h, x:x + box.w])
    raster.close()
    ours, gdals = tmp_path / "ours.tif", tmp_path / "gdal.tif"
    publish_cog(tif, ours, "MODE")
    plain = tmp_path / "plain.tif"
    with rasterio.open(tif) as src:
        profile = src.profile
        with rasterio.open(plain, "w", **profile) as dst:
            dst.write(src.read())
    publish_cog(plain, gdals, "MODE")  # no overviews beside it: GDAL makes them
    with rasterio.open(ours) as a, rasterio.open(gdals) as b:
        assert a.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert a.overviews(1) == b.overviews(1) == [2, 4]
        assert a.colormap(1)[1] == (0, 0, 255, 255) and a.tags()["FARSLIP_CLASSES"] == "[]" and a.nodata == NODATA
        assert a.crs == b.crs and a.transform == b.transform
        assert np.array_equal(a.read(1), labels)
    expected = labels
    for k in (1, 2):
        expected = reference(expected, "mode")
        with rasterio.open(ours, overview_level=k - 1) as a, rasterio.open(gdals, overview_level=k - 1) as b:
            level, gdal_level = a.read(1), b.read(1)
        assert level.shape == gdal_level.shape == expected.shape
        assert np.array_equal(level, expected)
        # GDAL's MODE: the same majority (it may settle a tie between two valid classes otherwise)
        assert (level == gdal_level).mean() > 0.95


def test_a_segmentation_publishes_its_class_and_score_overviews(tmp_path, tiny_model):
    image, _ = scene(1100, 1300)
    src = write_raster(tmp_path / "in.tif", image, crs="EPSG:32633", res=0.25)
    segmenter = Segmenter(tiny_model, "water; grass; building; road")
    segment_raster(RasterJob(str(src), str(tmp_path / "out"), gsd=0.4, scores=True, polygons=False), segmenter)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["in_classes.tif", "in_scores.tif", "in_summary.json"]
    with rasterio.open(out / "in_classes.tif") as classes, rasterio.open(out / "in_scores.tif") as scores:
        assert classes.overviews(1) == scores.overviews(4) == [2, 4]
        assert classes.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert [c["name"] for c in json.loads(classes.tags()["FARSLIP_CLASSES"])][0] == "water"
        labels, probabilities = classes.read(1), scores.read()
    with rasterio.open(out / "in_classes.tif", overview_level=0) as a, \
            rasterio.open(out / "in_scores.tif", overview_level=0) as b:
        assert np.array_equal(a.read(1), reference(labels, "mode"))
        assert np.array_equal(b.read(), reference(probabilities, "average"))


def test_class_counts_both_ways_count_what_numpy_counts():
    """The GPU's way of counting (a comparison and sum per class value) and the CPU's (bincount)."""
    labels = class_map(np.random.default_rng(5), 300, 200, classes=6)
    expected = np.bincount(labels.ravel(), minlength=256)
    for by_comparison in (False, True):
        counts = class_counts(torch.from_numpy(labels), 6, by_comparison=by_comparison)
        assert counts.dtype == torch.int64 and np.array_equal(counts.numpy(), expected)
