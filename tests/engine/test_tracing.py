"""A block's traced regions are its pixels exactly: each class's polygons (holes included) cover the
pixels of that class and nothing else, each region's pixel count and confidence sum are its own, and
the regions touching an inner block border are the ones marked to merge with the next block."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import shapely
from affine import Affine
from rasterio.features import rasterize

from engine.boxes import Box
from engine.geo.tracing import block_regions

NODATA = 255
TRANSFORM = Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 5200000.0)


def block_with_holes(rng) -> np.ndarray:
    """Classes 0-3 in patches with scattered pixels, a ring of class 1 holding an island of class 2
    inside a hole of class 0, and no data in a corner."""
    values = np.kron(rng.integers(0, 4, (12, 14)), np.ones((9, 9), dtype=np.uint8))[:100, :120].astype(np.uint8)
    values[rng.random(values.shape) < 0.05] = 3
    values[20:60, 30:80] = 1
    values[28:52, 40:70] = 0
    values[35:45, 50:60] = 2
    values[:15, :18] = NODATA
    return values


@pytest.mark.parametrize("core", [Box(0, 0, 100, 120), Box(100, 120, 100, 120)], ids=["corner", "inner"])
def test_regions_cover_exactly_the_pixels_of_their_class(core):
    rng = np.random.default_rng(5)
    classes = block_with_holes(rng)
    confidence = rng.integers(0, 255, classes.shape, dtype=np.uint8)
    regions = block_regions(core, classes, confidence, TRANSFORM, 300, 360, NODATA)
    block_transform = TRANSFORM * Affine.translation(core.x, core.y)
    assert len(regions) > 50 and any(len(p.interiors) for p in regions.polygons)  # holes were traced
    for value in range(4):
        polygons = regions.polygons[regions.classes == value]
        drawn = rasterize(polygons, out_shape=classes.shape, transform=block_transform).astype(bool)
        assert np.array_equal(drawn, classes == value), f"class {value}"
    assert (regions.pixels == np.round(shapely.area(regions.polygons) / 0.25)).all()
    for polygon, pixels, total in zip(regions.polygons, regions.pixels, regions.sums):
        inside = rasterize([polygon], out_shape=classes.shape, transform=block_transform).astype(bool)
        assert inside.sum() == pixels and confidence[inside].sum() == total
    # regions reaching an inner border (none for a block at the raster's top-left corner whose
    # neighbours are to the right and below: only those reaching its right or bottom edge)
    for polygon, seam in zip(regions.polygons, regions.at_seam):
        inside = rasterize([polygon], out_shape=classes.shape, transform=block_transform).astype(bool)
        touches = inside[-1].any() or inside[:, -1].any() or (core.y > 0 and inside[0].any()) or (core.x > 0 and inside[:, 0].any())
        assert seam == touches
    again = pickle.loads(pickle.dumps(regions))  # as a worker process sends them
    assert all(shapely.equals_exact(again.polygons, regions.polygons, tolerance=0))
    assert np.array_equal(again.sums, regions.sums) and np.array_equal(again.at_seam, regions.at_seam)


def test_a_block_of_no_data_has_no_regions():
    classes = np.full((64, 64), NODATA, dtype=np.uint8)
    regions = block_regions(Box(0, 0, 64, 64), classes, classes, TRANSFORM, 64, 64, NODATA)
    assert len(regions) == 0


def test_a_simplified_outline_keeps_the_area_of_its_pixels(tmp_path):
    """Lines one pixel wide (a path, a hedge), a single pixel, a block-crossing strip: with the default
    simplification their outlines lose corners, but each polygon's area_m2 is that of its pixels, and the
    polygons of a class add up to the class's pixels."""
    from pyogrio.raw import read
    from rasterio.crs import CRS

    from engine.geo.polygons import PolygonWriter

    classes = np.full((64, 96), 0, dtype=np.uint8)
    classes[10, 5:90] = 1  # a 1 px wide line across both blocks
    classes[20:60, 40] = 2  # a 1 px wide column
    classes[50, 70] = 3  # one pixel
    row_area = np.full(64, 0.25)
    writer = PolygonWriter(tmp_path / "p.gpkg", TRANSFORM, CRS.from_epsg(32633), 64, 96, ["a", "b", "c", "d"],
                           simplify_px=1.0, row_area=row_area)
    for core in (Box(0, 0, 64, 48), Box(0, 48, 64, 48)):
        block = classes[core.y:core.y + core.h, core.x:core.x + core.w]
        writer.add_block(core, block, np.full(block.shape, 200, np.uint8))
    writer.close()
    meta, _, _, fields = read(tmp_path / "p.gpkg")
    got = dict(zip(meta["fields"], fields))
    for value in range(4):
        assert got["area_m2"][got["class_index"] == value].sum() == pytest.approx((classes == value).sum() * 0.25)
    assert sorted(got["area_m2"][got["class_index"] > 0]) == pytest.approx(sorted([85 * 0.25, 40 * 0.25, 0.25]))
