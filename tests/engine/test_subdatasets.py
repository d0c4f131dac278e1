"""Rasters inside containers (GDAL subdatasets: a GeoPackage of several rasters, a Sentinel-2 product,
a NetCDF file), as a user meets them: a container named as the input says which rasters it holds and
how to name one; a subdataset name (`GPKG:<file>:<table>`, as gdalinfo and QGIS write it) runs, its
outputs named after the container and the part; the service reads a file by path only."""

from __future__ import annotations

import json

import pytest
import rasterio

from engine.cli import main
from engine.geo.raster_names import raster_stem
from tests.engine.api_helpers import AUTH, wait_for
from tests.engine.conftest import TINY
from tests.engine.rasters import scene, write_geopackage

CLASSES = "water; grass; building"


def _run(*argv, checkpoint):
    return main([*argv, "--classes", CLASSES, "--model", str(checkpoint), "--arch", TINY, "-q"])


def test_a_container_names_the_rasters_it_holds_and_one_of_them_runs(tmp_path, capsys, checkpoint):
    container = write_geopackage(tmp_path / "city.gpkg", scene(96, 128, seed=3)[0], "ortho")
    write_geopackage(container, scene(96, 128, seed=4)[0], "infrared", append=True)
    assert _run("segment", str(container), "-o", str(tmp_path / "out"), checkpoint=checkpoint) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "city.gpkg holds 2 rasters (GDAL subdatasets)" in lines[0], lines
    assert f"GPKG:{container}:ortho" in lines[0] and f"GPKG:{container}:infrared" in lines[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())

    name = f"GPKG:{container}:ortho"
    assert _run("segment", name, "-o", str(tmp_path / "out"), checkpoint=checkpoint) == 0
    with rasterio.open(tmp_path / "out" / "city_ortho_classes.tif") as got, rasterio.open(name) as source:
        assert (got.crs, got.transform, got.shape) == (source.crs, source.transform, source.shape)
        assert (got.read(1) != 255).all()
    summary = json.loads((tmp_path / "out" / "city_ortho_summary.json").read_text())
    assert summary["input"] == name


def test_a_batch_of_subdatasets_gets_one_set_of_outputs_each(tmp_path, checkpoint):
    """Named on the command line, or in a list file beside the container (relative to the list, as any
    file there)."""
    (tmp_path / "data").mkdir()
    container = write_geopackage(tmp_path / "data" / "c.gpkg", scene(64, 96, seed=1)[0], "a")
    write_geopackage(container, scene(64, 96, seed=2)[0], "b", append=True, origin=(500000.0, 5300000.0))
    listed = tmp_path / "data" / "rasters.txt"
    listed.write_text("GPKG:c.gpkg:b\n")
    names = [f"GPKG:{container}:a", f"GPKG:{container}:b"]
    assert _run("segment-batch", names[0], str(listed), "-o", str(tmp_path / "out"), "--no-polygons",
                checkpoint=checkpoint) == 0
    for name, stem in zip(names, ("c_a", "c_b")):
        with rasterio.open(tmp_path / "out" / f"{stem}_classes.tif") as got, rasterio.open(name) as source:
            assert (got.transform, got.shape) == (source.transform, source.shape)


def test_a_subdataset_of_a_missing_file_is_not_found(tmp_path, capsys, checkpoint):
    name = f"GPKG:{tmp_path / 'gone.gpkg'}:ortho"
    assert _run("segment", name, "-o", str(tmp_path / "out"), checkpoint=checkpoint) == 2
    assert capsys.readouterr().err.strip() == f"farslip: error: input raster not found: {name}"


@pytest.mark.parametrize("name, stem", [
    ("SENTINEL2_L2A:/data/S2B_MSIL2A.SAFE/MTD_MSIL2A.xml:TCI:EPSG_32633", "MTD_MSIL2A_TCI_EPSG_32633"),
    ('NETCDF:"/data/scene 1.nc":reflectance', "scene 1_reflectance"),
    ('HDF5:"/data/l1.h5"://bands/rgb', "l1_bands_rgb"),
    ("GTIFF_DIR:2:/data/multipage.tif", "multipage_2"),
    ("/data/plain.tif", "plain"),
])
def test_output_names_of_a_subdataset_name_the_container_and_the_part(name, stem):
    assert raster_stem(name) == stem


# --- the service -------------------------------------------------------------------------------------

def test_the_service_reads_a_geopackage_raster_by_path_and_refuses_gdal_names(client, root):
    single = write_geopackage(root / "ortho.gpkg", scene(64, 64)[0])
    double = write_geopackage(root / "two.gpkg", scene(64, 64)[0], "a")
    write_geopackage(double, scene(64, 64)[0], "b", append=True)
    health = client.get("/v1/health").json()
    assert {"GTiff", "GPKG", "VRT"} <= set(health["path_formats"])

    def segment(path):
        return client.post("/v1/jobs/segment", headers=AUTH, json={"input": {"path": str(path)}, "classes": ["water"]})

    response = segment(single)
    assert response.status_code == 202
    done = wait_for(client, response.json()["id"])
    assert done["state"] == "done" and done["summary"]["input"] == str(single), done
    response = segment(double)
    assert response.status_code == 400 and "two.gpkg holds 2 rasters" in response.json()["detail"]
    for name in (f"GPKG:{double}:a", "AB:" + "x" * 300):  # (the second too long a name for the file system)
        response = segment(name)
        assert response.status_code == 400 and "is a GDAL name" in response.json()["detail"], response.text
    # a GeoPackage is read from the engine's own disk, never taken as an upload (an SQLite database)
    response = client.post("/v1/uploads", headers=AUTH, content=single.read_bytes())
    assert response.status_code == 400 and "not a raster this engine serves" in response.json()["detail"]
