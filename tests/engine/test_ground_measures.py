"""Areas and pixel sizes on the ground, on the CRSs people's rasters come in: a Web Mercator raster (QGIS's
exports of XYZ and web layers) at 52° N has pixels 1.64× smaller and areas 2.70× smaller than its CRS
units say — the summary's areas, the polygons' areas and the GSD are the ground's (as QGIS measures on
the ellipsoid), while on UTM they stay pixel count × pixel area."""

from __future__ import annotations

import pytest
import rasterio
import shapely
from affine import Affine
from pyproj import Geod, Transformer
from shapely.ops import transform as reproject

from engine.dense import Segmenter
from engine.geo.pipeline import RasterJob, segment_raster
from tests.engine.rasters import scene, write_raster

CLASSES = "water; grass; building; road"
GEOD = Geod(ellps="WGS84")
BERLIN_3857 = (1489000.0, 6894000.0)  # 52.5° N


@pytest.fixture(scope="module")
def segmenter(tiny_model):
    return Segmenter(tiny_model, CLASSES)


def _geodesic_m2(geom, crs: str) -> float:
    """The polygon's area on the ellipsoid, its edges cut into 200ths of its size first (so that an edge
    along a parallel stays on it)."""
    to_lonlat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    minx, miny, maxx, maxy = geom.bounds
    edge = max(maxx - minx, maxy - miny) / 200
    return abs(GEOD.geometry_area_perimeter(reproject(to_lonlat.transform, geom.segmentize(edge)))[0])


def _polygons(path):
    from pyogrio.raw import read

    meta, _, geometry, fields = read(path)
    return shapely.from_wkb(geometry), dict(zip(meta["fields"], fields))


def test_a_web_mercator_raster_is_measured_on_the_ground(tmp_path, segmenter):
    src = write_raster(tmp_path / "web.tif", scene(200, 300, seed=5)[0], crs="EPSG:3857", origin=BERLIN_3857,
                       res=0.5)
    summary = segment_raster(RasterJob(str(src), str(tmp_path / "out"), gsd=0.25, simplify=0.0), segmenter)
    with rasterio.open(src) as ds:
        footprint = shapely.box(*ds.bounds)
        centre = ds.transform @ (150, 100)
    # the GSD: the ground distance between two neighbouring pixel centres
    lon, lat = Transformer.from_crs("EPSG:3857", "EPSG:4326", always_xy=True).transform(
        [centre[0], centre[0] + 0.5], [centre[1], centre[1]])
    ground_gsd = GEOD.inv(lon[0], lat[0], lon[1], lat[1])[2]
    assert summary["source_gsd_m"] == pytest.approx(ground_gsd, rel=2e-3) and ground_gsd < 0.35
    # areas: all classes together cover the raster's footprint on the ground
    total = sum(c["area_m2"] for c in summary["classes"])
    assert total == pytest.approx(_geodesic_m2(footprint, "EPSG:3857"), rel=2e-3)
    assert total < footprint.area / 2.5  # (the CRS's own m² are 2.7× larger here)
    geoms, fields = _polygons(tmp_path / "out" / "web_polygons.gpkg")
    for geom, area in zip(geoms[:50], fields["area_m2"][:50]):
        assert area == pytest.approx(_geodesic_m2(geom, "EPSG:3857"), rel=2e-3)
    for c in summary["classes"]:  # unsimplified polygons cover exactly the class's pixels
        assert fields["area_m2"][fields["class_index"] == c["index"]].sum() == pytest.approx(c["area_m2"], rel=2e-3)


def test_polygons_spanning_degrees_of_latitude_have_their_ground_area(tmp_path, segmenter):
    """A coarse web export (3 km pixels from 45° to 52° N): the scale changes by a third inside one polygon,
    so no single scale would do — each polygon's area is its area on the ellipsoid."""
    src = write_raster(tmp_path / "coarse.tif", scene(160, 200, seed=9)[0], crs="EPSG:3857",
                       origin=(1489000.0, 6894000.0), res=5000.0)
    summary = segment_raster(RasterJob(str(src), str(tmp_path / "out"), simplify=0.0), segmenter)
    geoms, fields = _polygons(tmp_path / "out" / "coarse_polygons.gpkg")
    tall = [i for i, g in enumerate(geoms) if g.bounds[3] - g.bounds[1] > 200_000]  # > 1.3° of latitude
    assert tall
    for i in tall:
        assert fields["area_m2"][i] == pytest.approx(_geodesic_m2(geoms[i], "EPSG:3857"), rel=2e-3)
    for c in summary["classes"]:
        assert fields["area_m2"][fields["class_index"] == c["index"]].sum() == pytest.approx(c["area_m2"], rel=2e-3)


def test_the_default_working_resolution_is_half_a_metre_on_the_ground(tmp_path, segmenter):
    """Nominal 0.5 m Web Mercator pixels at 52.5° N are ~0.30 m on the ground: read at 0.5 m, like a
    UTM raster of 0.30 m pixels."""
    src = write_raster(tmp_path / "web.tif", scene(200, 300, seed=5)[0], crs="EPSG:3857", origin=BERLIN_3857,
                       res=0.5)
    summary = segment_raster(RasterJob(str(src), str(tmp_path / "out"), polygons=False), segmenter)
    assert summary["working_gsd_m"] == 0.5
    ratio = summary["source_gsd_m"] / 0.5
    assert summary["working_size"] == [round(300 * ratio), round(200 * ratio)]


def test_utm_areas_stay_pixel_count_times_pixel_area(tmp_path, segmenter):
    src = write_raster(tmp_path / "utm.tif", scene(120, 160, seed=2)[0], crs="EPSG:32633", res=0.5)
    summary = segment_raster(RasterJob(str(src), str(tmp_path / "out"), polygons=False), segmenter)
    assert summary["source_gsd_m"] == 0.5
    assert all(c["area_m2"] == pytest.approx(c["pixels"] * 0.25) for c in summary["classes"])


@pytest.mark.parametrize("unit, metres", [('"metre",1', 1.0), ('"US survey foot",0.304800609601219', 0.3048006096)],
                         ids=["metres", "us-feet"])
def test_a_local_site_crs_is_measured_in_its_unit(tmp_path, segmenter, unit, metres):
    """Drone photogrammetry's plain site coordinates (an engineering CRS, no datum): the unit it states."""
    crs = (f'LOCAL_CS["Drone site",LOCAL_DATUM["Arbitrary",32767],UNIT[{unit}],'
           f'AXIS["Easting",EAST],AXIS["Northing",NORTH]]')
    src = write_raster(tmp_path / "site.tif", scene(120, 160, seed=6)[0], crs=crs, origin=(1000.0, 2000.0), res=1.0)
    summary = segment_raster(RasterJob(str(src), str(tmp_path / "out")), segmenter)
    assert summary["source_gsd_m"] == pytest.approx(metres)
    assert all(c["area_m2"] == pytest.approx(c["pixels"] * metres ** 2, abs=1e-3) for c in summary["classes"])
    geoms, fields = _polygons(tmp_path / "out" / "site_polygons.gpkg")
    assert fields["area_m2"].sum() == pytest.approx(sum(c["area_m2"] for c in summary["classes"]), rel=0.02)
    with rasterio.open(src) as a, rasterio.open(tmp_path / "out" / "site_classes.tif") as b:
        assert b.crs == a.crs and b.transform == a.transform


@pytest.mark.parametrize("crs, transform", [
    ("EPSG:32633", Affine(0.5, 0, 500000.0, 0, -0.3, 5200000.0)),  # 0.5 × 0.3 m pixels
    ("EPSG:4326", Affine(0.000008, 0, 10.0, 0, -0.000008, 60.0)),  # square degrees at 60° N: 0.45 × 0.89 m
], ids=["utm-0.5x0.3", "degrees-at-60N"])
def test_pixels_that_are_not_square_on_the_ground_are_read_square(tmp_path, segmenter, crs, transform):
    """The model sees square pixels (shapes not stretched): each axis resampled to the working GSD on the
    ground; the outputs stay on the source grid."""
    h, w = 150, 200
    src = write_raster(tmp_path / "in.tif", scene(h, w, seed=7)[0], crs=crs, transform=transform)
    summary = segment_raster(RasterJob(str(src), str(tmp_path / "out"), polygons=False), segmenter)
    with rasterio.open(src) as ds:
        centre = ds.transform @ (w / 2, h / 2)
    to_lonlat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    lon, lat = to_lonlat.transform([centre[0], centre[0] + transform.a, centre[0]],
                                   [centre[1], centre[1], centre[1] + transform.e])
    side_x = GEOD.inv(lon[0], lat[0], lon[1], lat[1])[2]  # a pixel's sides on the ground
    side_y = GEOD.inv(lon[0], lat[0], lon[2], lat[2])[2]
    working = summary["working_gsd_m"]
    assert working == pytest.approx(max((side_x * side_y) ** 0.5, 0.5), rel=1e-3)
    width, height = summary["working_size"]
    assert width * working == pytest.approx(w * side_x, rel=0.01)
    assert height * working == pytest.approx(h * side_y, rel=0.01)
    assert any("not square" in note for note in summary["notes"])
    with rasterio.open(src) as a, rasterio.open(tmp_path / "out" / "in_classes.tif") as b:
        assert (b.transform, b.shape) == (a.transform, a.shape)
