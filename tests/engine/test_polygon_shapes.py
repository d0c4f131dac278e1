"""The shapes of the polygons: the same whatever the block size on any affine grid (rotated, sheared, or a
pixel size that is no binary fraction: block pieces are merged in pixel coordinates), thin and small
regions keep their area through simplification (Douglas-Peucker made triangles of 1 px wide strips and
single pixels), neighbours share their simplified boundaries (no gaps or overlaps), and a geographic CRS
of another body is measured on its own ellipsoid."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from pyproj import Geod
from rasterio.crs import CRS
from rasterio.features import shapes
from scipy import ndimage

from engine.boxes import Box
from engine.dense import Segmenter
from engine.geo.grid_geometry import geod_of, pixel_metres
from engine.geo.pipeline import RasterJob, segment_raster
from engine.geo.polygons import PolygonWriter
from tests.engine.rasters import scene, write_raster

NODATA = 255
ORIGIN = (500000.0, 5200000.0)
GRIDS = {
    "rotated-30": Affine.translation(*ORIGIN) @ Affine.rotation(30) @ Affine.scale(0.5, -0.5),
    "sheared": Affine(0.5, 0.1, ORIGIN[0], 0.05, -0.5, ORIGIN[1]),
    "north-up-0.3": Affine(0.3, 0.0, ORIGIN[0], 0.0, -0.3, ORIGIN[1]),  # 0.3: no binary fraction either
}
MARS_WKT = ('GEOGCS["Mars 2000",DATUM["D_Mars_2000",SPHEROID["Mars_2000_IAU_IAG",3396190,169.89444722361179]],'
            'PRIMEM["Greenwich",0],UNIT["Decimal_Degree",0.0174532925199433]]')
MARS = Geod(a=3396190.0, rf=169.89444722361179)  # the ellipsoid of the CRS, written out here


def class_map(height: int, width: int, sigma: float = 4.0, seed: int = 0, noise: float = 0.0) -> np.ndarray:
    """Smooth regions of 4 classes, `noise` of the pixels another class, a corner of no data."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal((height, width)), sigma)
    values = np.digitize(field, np.quantile(field, [0.25, 0.5, 0.75])).astype(np.uint8)
    scattered = rng.random((height, width)) < noise
    values[scattered] = rng.integers(0, 4, int(scattered.sum()), dtype=np.uint8)
    values[: height // 8, : width // 7] = NODATA
    return values


def write_polygons(path, classes: np.ndarray, transform: Affine, block: int, simplify: float = 1.0):
    """(polygons, class indices, area_m2) of `PolygonWriter` fed `classes` in blocks of `block` px."""
    from pyogrio.raw import read

    height, width = classes.shape
    pixel_area = abs(transform.determinant)
    writer = PolygonWriter(path, transform, CRS.from_epsg(32633), height, width, ["a", "b", "c", "d"],
                           simplify_px=simplify, row_area=np.full(height, pixel_area))
    for y in range(0, height, block):
        for x in range(0, width, block):
            core = Box(y, x, min(block, height - y), min(block, width - x))
            part = classes[y:y + core.h, x:x + core.w]
            writer.add_block(core, part, np.full(part.shape, 200, np.uint8))
    writer.close()
    meta, _, geometry, fields = read(path)
    fields = dict(zip(meta["fields"], fields))
    return shapely.from_wkb(geometry), fields["class_index"], fields["area_m2"]


def regions_of(classes: np.ndarray, transform: Affine) -> tuple[np.ndarray, np.ndarray]:
    """(polygons, class values) of the 4-connected one-class regions of a whole class map, traced at once."""
    traced = list(shapes(classes, mask=classes != NODATA, connectivity=4, transform=transform))
    return (np.array([shapely.geometry.shape(g) for g, _ in traced], dtype=object),
            np.array([int(v) for _, v in traced]))


def symmetric_difference_area(a: np.ndarray, b: np.ndarray) -> float:
    return shapely.area(shapely.symmetric_difference(shapely.union_all(a), shapely.union_all(b)))


# --- 1. block borders ---------------------------------------------------------------------------------


@pytest.mark.parametrize("simplify", [0.0, 1.0])
@pytest.mark.parametrize("grid", GRIDS, ids=list(GRIDS))
def test_polygons_do_not_depend_on_the_block_size(tmp_path, grid, simplify):
    """Blocks of 37 px and one block give the same polygons, vertex for vertex: one per connected region
    of the class map (a rotated grid's block pieces used to miss each other by ~1e-9 and stay apart)."""
    transform = GRIDS[grid]
    classes = class_map(150, 170)
    classes[60, 5:160] = 1  # a 1 px wide line across blocks
    small, small_classes, _ = write_polygons(tmp_path / "small.gpkg", classes, transform, 37, simplify)
    whole, whole_classes, _ = write_polygons(tmp_path / "whole.gpkg", classes, transform, 170, simplify)
    regions, region_classes = regions_of(classes, transform)

    assert len(small) == len(whole) == len(regions)
    for value in range(4):
        assert (small_classes == value).sum() == (whole_classes == value).sum() == (region_classes == value).sum()
    assert (sorted(zip(small_classes.tolist(), shapely.to_wkb(small)))
            == sorted(zip(whole_classes.tolist(), shapely.to_wkb(whole))))
    assert shapely.area(small).sum() == pytest.approx(shapely.area(whole).sum(), rel=1e-12)
    assert shapely.coverage_is_valid(small)  # neighbours share their corners, traced or simplified
    pixel_area = abs(transform.determinant)
    assert symmetric_difference_area(small, whole) < 1e-9 * pixel_area
    if simplify == 0:  # the traced outlines: each class's polygons cover exactly its pixels
        for value in range(4):
            assert symmetric_difference_area(small[small_classes == value],
                                             regions[region_classes == value]) < 1e-6 * pixel_area
        assert shapely.area(small).sum() == pytest.approx((classes != NODATA).sum() * pixel_area)


@pytest.fixture(scope="module")
def segmenter(tiny_model):
    return Segmenter(tiny_model, "water; grass; building; road")


@pytest.mark.parametrize("grid", ["rotated-30", "sheared"])
def test_a_segmented_rotated_raster_has_the_same_polygons_with_any_block(tmp_path, segmenter, grid):
    """`segment` with blocks of 224 px (the least: the tiny model's crop) and of 1024 px: one polygon per
    connected region of the class map, the same polygons."""
    from pyogrio.raw import read

    src = write_raster(tmp_path / "in.tif", scene(300, 340, seed=5)[0], transform=GRIDS[grid])
    outputs = {}
    for block in (224, 1024):
        out = tmp_path / f"out{block}"
        segment_raster(RasterJob(str(src), str(out), block=block), segmenter)
        with rasterio.open(out / "in_classes.tif") as ds:
            labels, transform = ds.read(1), ds.transform
        meta, _, geometry, fields = read(out / "in_polygons.gpkg")
        outputs[block] = labels, shapely.from_wkb(geometry), dict(zip(meta["fields"], fields))
    (labels, small, small_fields), (labels_whole, whole, _) = outputs[224], outputs[1024]
    assert (labels == labels_whole).all()  # the class map does not depend on the block
    regions, _ = regions_of(labels, transform)
    assert len(regions) > 1
    assert len(small) == len(whole) == len(regions)
    assert shapely.area(small).sum() == pytest.approx(shapely.area(whole).sum(), rel=1e-12)
    assert shapely.coverage_is_valid(small)  # neighbours share their corners, traced or simplified
    assert symmetric_difference_area(small, whole) < 1e-9 * abs(transform.determinant)
    assert np.nansum(small_fields["area_m2"]) == pytest.approx((labels != NODATA).sum() * abs(transform.determinant))


@pytest.mark.parametrize("block", [3, 8])
def test_the_raster_outline_is_kept(tmp_path, block):
    """A region whose boundary runs round a corner of the raster keeps the corner (simplified, the
    section from one neighbour to the next cut it off), whatever the blocks."""
    classes = np.zeros((8, 8), dtype=np.uint8)
    classes[0, 3] = classes[1, 0] = 1  # the background's boundary runs round the top-left corner
    geoms, _, _ = write_polygons(tmp_path / "p.gpkg", classes, GRIDS["north-up-0.3"], block)
    union = shapely.union_all(geoms)
    assert union.area == pytest.approx(64 * 0.09, rel=1e-9)
    west, north = ORIGIN
    for x, y in ((0, 0), (0, 8), (8, 0), (8, 8)):
        assert union.covers(shapely.Point(west + 0.3 * x, north - 0.3 * y))


@pytest.mark.parametrize("radius, simplify", [(10, 1.0), (40, 2.5)])
def test_a_thin_ring_shaped_region_keeps_its_area(tmp_path, radius, simplify):
    """A 2 px wide ring: its outline and its hole each kept their area within 5 %, but the outline grew
    and the hole shrank — the region gained 15–29 %. A polygon's own area counts too."""
    size = 2 * radius + 6
    rows, columns = np.mgrid[:size, :size]
    distance = np.hypot(rows - size / 2, columns - size / 2)
    classes = ((distance >= radius - 2) & (distance < radius)).astype(np.uint8)
    geoms, values, areas = write_polygons(tmp_path / "p.gpkg", classes, GRIDS["north-up-0.3"], 32, simplify)
    ring = geoms[values == 1]
    assert len(ring) == 1 and shapely.get_num_interior_rings(ring[0].geoms[0]) == 1
    assert ring[0].area == pytest.approx(areas[values == 1][0], rel=0.05)
    assert shapely.coverage_is_valid(geoms)


def test_polygons_of_a_coarser_working_grid_lose_its_steps(tmp_path, segmenter):
    """At a working GSD 5 × the source's, the class map comes back on the source grid in steps of 5 pixels:
    the polygons are simplified within one working pixel — a fifth fewer corners than the steps, within 5
    source pixels of the class map's outlines — and still tile it without gaps or overlaps."""
    from pyogrio.raw import read

    src = write_raster(tmp_path / "in.tif", scene(400, 400, seed=3)[0], res=0.1)
    out = tmp_path / "out"
    segment_raster(RasterJob(str(src), str(out), gsd=0.5), segmenter)
    with rasterio.open(out / "in_classes.tif") as ds:
        labels, transform = ds.read(1), ds.transform
    _, _, geometry, _ = read(out / "in_polygons.gpkg")
    polygons = shapely.from_wkb(geometry)
    steps, _ = write_polygons(tmp_path / "steps.gpkg", labels, transform, 400, simplify=1.0)[:2]
    traced, _ = regions_of(labels, transform)
    assert len(polygons) == len(traced) > 1
    assert shapely.get_num_coordinates(polygons).sum() < 0.8 * shapely.get_num_coordinates(steps).sum()
    assert shapely.hausdorff_distance(shapely.union_all(shapely.boundary(polygons)),
                                      shapely.union_all(shapely.boundary(traced))) <= 5 * 0.1 + 1e-9
    assert shapely.coverage_is_valid(polygons)
    assert shapely.union_all(polygons).area == pytest.approx((labels != NODATA).sum() * 0.01, rel=1e-9)


# --- 2. simplification ------------------------------------------------------------------------------


def thin_features() -> tuple[np.ndarray, list[tuple[int, int]]]:
    """A background with 1 px wide lines, single pixels, Ls of 3 pixels and a disc; the (row, col) of a
    pixel of each thin or small feature."""
    classes = np.zeros((120, 140), dtype=np.uint8)
    yy, xx = np.mgrid[0:120, 0:140]
    classes[(yy - 80) ** 2 + (xx - 95) ** 2 < 28 ** 2] = 3  # a disc: a smooth outline to simplify
    seeds = []
    classes[5, 3:130] = 1  # a 1 px line across every block
    seeds.append((5, 3))
    classes[10:110, 8] = 1  # a 1 px column
    seeds.append((10, 8))
    for k in range(8):  # single pixels
        classes[15 + 6 * k, 20] = 2
        seeds.append((15 + 6 * k, 20))
    for k in range(6):  # Ls of 3 pixels, 2 px wide and tall, four ways round
        y, x = 20 + 8 * k, 35
        classes[y:y + 2, x:x + 2] = 2
        classes[y + k % 2, x + (k // 2) % 2] = 0
        seeds.append((y, x) if classes[y, x] == 2 else (y + 1, x + 1))
    for k in range(10):  # a diagonal 1 px staircase (4-connected)
        classes[70 + k, 30 + k:32 + k] = 1
    seeds.append((70, 30))
    return classes, seeds


@pytest.mark.parametrize("grid", ["rotated-30", "north-up-0.3"])
@pytest.mark.parametrize("block", [32, 140])
def test_thin_and_small_regions_keep_their_area(tmp_path, grid, block):
    """Each polygon's outline holds its pixels' area (area_m2) within 2 % after the default simplification:
    a 1 px wide line, a pixel and an L of 3 pixels used to become triangles of half or two thirds of it."""
    transform = GRIDS[grid]
    classes, seeds = thin_features()
    geoms, values, areas = write_polygons(tmp_path / "p.gpkg", classes, transform, block, simplify=1.0)
    assert len(geoms) == len(regions_of(classes, transform)[0])
    assert shapely.is_valid(geoms).all() and not shapely.is_empty(geoms).any()
    assert shapely.area(geoms) == pytest.approx(areas, rel=0.02)
    tree = shapely.STRtree(geoms)
    for row, col in seeds:  # each thin or small feature is there, with its pixels' area exactly
        found = tree.query(shapely.Point(transform @ (col + 0.5, row + 0.5)), predicate="within")
        found = found[values[found] == classes[row, col]]  # (the simplified background may overlap it)
        assert len(found) == 1
        assert geoms[found[0]].area == pytest.approx(areas[found[0]], rel=1e-6)


def test_a_smooth_region_is_still_simplified(tmp_path):
    """The disc loses most of its stair-step vertices, and its area changes by under 2 %."""
    transform = GRIDS["rotated-30"]
    classes, _ = thin_features()
    geoms, values, areas = write_polygons(tmp_path / "p.gpkg", classes, transform, 32, simplify=1.0)
    raw, raw_values = regions_of(classes, transform)
    disc, raw_disc = geoms[values == 3], raw[raw_values == 3]
    assert len(disc) == len(raw_disc) == 1
    assert shapely.get_num_coordinates(disc[0]) < shapely.get_num_coordinates(raw_disc[0]) / 3
    assert disc[0].area == pytest.approx(areas[values == 3][0], rel=0.02)
    assert symmetric_difference_area(disc, raw_disc) < 0.05 * disc[0].area


@pytest.mark.parametrize("block", [23, 64, 160])
@pytest.mark.parametrize("grid", ["rotated-30", "north-up-0.3"])
def test_simplified_neighbours_share_their_boundaries(tmp_path, grid, block):
    """On a fragmented class map (smooth regions, 5 % of the pixels another class, a round hole of no
    data) the simplified polygons are valid and tile the map's valid pixels exactly: no gaps, no overlaps
    (simplified one by one they left ~3 % of the map in gaps and 3 % in overlaps; a line along no data
    could cut across it into another polygon), whatever the blocks; they are simplified (fewer corners
    than traced), and burn back into their class map."""
    from rasterio.features import rasterize

    transform = GRIDS[grid]
    classes = class_map(160, 160, sigma=3.0, seed=2, noise=0.05)
    rows, columns = np.mgrid[:160, :160]
    classes[np.hypot(rows - 100, columns - 60) < 15] = NODATA  # a round hole of no data too
    geoms, values, _ = write_polygons(tmp_path / "p.gpkg", classes, transform, block, simplify=1.0)
    traced, _ = regions_of(classes, transform)
    pixel_area = abs(transform.determinant)
    valid = (classes != NODATA).sum() * pixel_area
    union = shapely.union_all(geoms).area
    assert shapely.is_valid(geoms).all()
    assert shapely.coverage_is_valid(geoms)  # GEOS's test: no overlaps, and neighbours share their corners
    assert union == pytest.approx(valid, rel=1e-9)  # no gaps
    assert shapely.area(geoms).sum() == pytest.approx(union, rel=1e-9)  # no overlaps
    assert symmetric_difference_area(geoms, traced) < 1e-6 * pixel_area  # the map's outline is kept
    assert shapely.get_num_coordinates(geoms).sum() < 0.9 * shapely.get_num_coordinates(traced).sum()
    burned = rasterize(zip(geoms, values.tolist()), out_shape=classes.shape, transform=transform, fill=NODATA,
                       dtype="uint8")
    assert (burned == classes).mean() > 0.95


def test_a_one_pixel_high_raster_has_polygons_of_its_whole_area(tmp_path, segmenter):
    """`segment` on a 1 × 600 raster and a 1 × 1 raster: the polygons' outlines hold the raster's area."""
    from pyogrio.raw import read

    for name, width in (("row", 600), ("pixel", 1)):
        src = write_raster(tmp_path / f"{name}.tif", scene(1, width, seed=3)[0])
        segment_raster(RasterJob(str(src), str(tmp_path / name)), segmenter)
        _, _, geometry, _ = read(tmp_path / name / f"{name}_polygons.gpkg")
        assert shapely.area(shapely.from_wkb(geometry)).sum() == pytest.approx(width * 0.25)


# --- 3. the ellipsoid of a geographic CRS -------------------------------------------------------------


def test_a_geographic_crs_is_measured_on_its_own_ellipsoid():
    transform = Affine(0.00001, 0, 10.0, 0, -0.00001, 10.0)
    lon, lat = transform @ (128, 128)
    mars = pixel_metres(CRS.from_wkt(MARS_WKT), transform, 256, 256)
    assert mars == pytest.approx((MARS.inv(lon, lat, lon + 1e-5, lat)[2], MARS.inv(lon, lat, lon, lat - 1e-5)[2]))
    earth = pixel_metres(CRS.from_epsg(4326), transform, 256, 256)  # WGS 84: as before
    wgs84 = Geod(ellps="WGS84")
    assert earth == pytest.approx((wgs84.inv(lon, lat, lon + 1e-5, lat)[2], wgs84.inv(lon, lat, lon, lat - 1e-5)[2]))
    assert geod_of(CRS.from_wkt(MARS_WKT)).a == pytest.approx(3396190.0)
    assert (geod_of(CRS.from_epsg(4326)).a, geod_of(CRS.from_epsg(4326)).f) == pytest.approx((wgs84.a, wgs84.f))
    local = CRS.from_wkt('LOCAL_CS["site",LOCAL_DATUM["site",0],UNIT["metre",1],AXIS["X",EAST],AXIS["Y",NORTH]]')
    assert (geod_of(local).a, geod_of(local).f) == (wgs84.a, wgs84.f)  # no ellipsoid: WGS 84


def test_a_mars_raster_has_its_areas_on_mars(tmp_path, segmenter):
    """A 64² raster of 1e-5° pixels at 10° N on Mars: the GSD, the areas per class and the polygons' area_m2
    are Mars's (on WGS 84 they were 1.9× and 3.5× too large)."""
    from pyogrio.raw import read

    transform = Affine(0.00001, 0, 10.0, 0, -0.00001, 10.0)
    src = write_raster(tmp_path / "mars.tif", scene(64, 64, seed=4)[0], crs=CRS.from_wkt(MARS_WKT),
                       transform=transform)
    summary = segment_raster(RasterJob(str(src), str(tmp_path / "out")), segmenter)
    footprint = shapely.box(10.0, 10.0 - 64e-5, 10.0 + 64e-5, 10.0)
    want = abs(MARS.geometry_area_perimeter(footprint)[0])
    assert sum(c["area_m2"] for c in summary["classes"]) == pytest.approx(want, rel=1e-4)
    lon, lat = transform @ (32, 32)
    sides = MARS.inv(lon, lat, lon + 1e-5, lat)[2], MARS.inv(lon, lat, lon, lat - 1e-5)[2]
    assert summary["source_gsd_m"] == pytest.approx(sum(sides) / 2, rel=1e-6)
    meta, _, _, fields = read(tmp_path / "out" / "mars_polygons.gpkg")
    assert np.nansum(dict(zip(meta["fields"], fields))["area_m2"]) == pytest.approx(want, rel=1e-4)
