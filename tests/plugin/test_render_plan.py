"""The resolution QGIS renders a layer at when the engine gets a copy: the engine's working GSD on the ground
(0.5 m, or the run's gsd) — a web layer (XYZ: no pixels of its own) exactly at it, in Web Mercator units as
long as 0.5 m on the ground there; a file never finer than its own pixels."""

from __future__ import annotations

import pytest


def _xyz_layer():
    from qgis.core import QgsRasterLayer

    layer = QgsRasterLayer("type=xyz&url=http://127.0.0.1:9/%7Bz%7D/%7Bx%7D/%7By%7D.png&zmax=19&zmin=0", "xyz", "wms")
    assert layer.isValid()
    return layer


def _ground_metres(crs, x0, y, dx):
    """The ground length (WGS 84) of dx CRS units eastwards at (x0, y)."""
    from qgis.core import QgsDistanceArea, QgsPointXY, QgsProject

    measure = QgsDistanceArea()
    measure.setSourceCrs(crs, QgsProject.instance().transformContext())
    measure.setEllipsoid("WGS84")
    return measure.measureLine(QgsPointXY(x0, y), QgsPointXY(x0 + dx, y))


@pytest.mark.parametrize("centre_y, gsd", [(6894000.0, None), (0.0, None), (6894000.0, 0.3)],
                         ids=["52N", "equator", "52N-gsd-0.3"])
def test_a_web_layer_is_rendered_at_the_working_gsd_on_the_ground(qgis_app, centre_y, gsd):
    from qgis.core import QgsRectangle

    from qgis_farslip.jobs import render_plan
    from qgis_farslip.raster_snapshot import RasterSnapshot

    layer = _xyz_layer()
    area = QgsRectangle(1489000.0 - 500, centre_y - 500, 1489000.0 + 500, centre_y + 500)
    _, resolution = render_plan(RasterSnapshot.of(layer), area, gsd)
    ground = _ground_metres(layer.crs(), 1489000.0, centre_y, resolution)
    assert ground == pytest.approx(gsd or 0.5, rel=0.01)


@pytest.mark.parametrize("pixel, want", [(0.25, 0.5), (1.0, 1.0)], ids=["finer-than-0.5", "coarser"])
def test_a_utm_file_is_rendered_no_finer_than_its_pixels_or_the_working_gsd(qgis_app, tmp_path, pixel, want):
    from osgeo import gdal, osr
    from qgis.core import QgsRasterLayer

    from qgis_farslip.jobs import render_plan
    from qgis_farslip.raster_snapshot import RasterSnapshot

    path = str(tmp_path / "utm.tif")
    ds = gdal.GetDriverByName("GTiff").Create(path, 64, 64, 3, gdal.GDT_Byte)
    ds.SetGeoTransform((500000.0, pixel, 0.0, 5800000.0, 0.0, -pixel))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    ds.SetProjection(srs.ExportToWkt())
    ds = None
    _, resolution = render_plan(RasterSnapshot.of(QgsRasterLayer(path, "utm")), None, None)
    assert resolution == pytest.approx(want)


def test_a_geographic_file_is_rendered_with_neither_side_coarser_than_the_working_gsd(qgis_app, tmp_path):
    """Square degrees at 60° N are half as wide as tall on the ground: the rendered pixels are 0.5 m tall
    (and narrower), not 0.5 m wide and 1 m tall."""
    from osgeo import gdal, osr
    from qgis.core import QgsDistanceArea, QgsPointXY, QgsProject, QgsRasterLayer

    from qgis_farslip.jobs import render_plan
    from qgis_farslip.raster_snapshot import RasterSnapshot

    path = str(tmp_path / "wgs84.tif")
    ds = gdal.GetDriverByName("GTiff").Create(path, 64, 64, 3, gdal.GDT_Byte)
    ds.SetGeoTransform((10.0, 0.000001, 0.0, 60.0, 0.0, -0.000001))  # 0.06 × 0.11 m pixels
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(4326)
    ds.SetProjection(srs.ExportToWkt())
    ds = None
    layer = QgsRasterLayer(path, "wgs84")
    area, resolution = render_plan(RasterSnapshot.of(layer), None, None)
    centre = area.center()
    measure = QgsDistanceArea()
    measure.setSourceCrs(layer.crs(), QgsProject.instance().transformContext())
    measure.setEllipsoid("WGS84")
    tall = measure.measureLine(QgsPointXY(centre.x(), centre.y()), QgsPointXY(centre.x(), centre.y() + resolution))
    wide = _ground_metres(layer.crs(), centre.x(), centre.y(), resolution)
    assert tall == pytest.approx(0.5, rel=0.01) and wide < tall
