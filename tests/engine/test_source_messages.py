"""What `farslip segment` prints on stderr for awkward inputs: the engine's own lines and nothing else
(no numpy warnings, no GDAL/PROJ messages), and a hint where a mistake is likely."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from engine.boxes import Box
from engine.cli import main
from tests.engine.conftest import TINY
from tests.engine.rasters import scene, write_raster

H, W = 64, 80


def _segment(capfd, checkpoint, src, out, *extra) -> tuple[int, list[str]]:
    """Exit code and stderr lines of `farslip segment` (stderr as the terminal gets it: GDAL's C-level
    messages included)."""
    capfd.readouterr()
    code = main(["segment", str(src), "--classes", "water; grass; road", "-o", str(out), "--model", str(checkpoint),
                 "--arch", TINY, "-q", *extra])
    return code, capfd.readouterr().err.strip().splitlines()


def _numpy_warnings(recwarn) -> list[str]:
    return [str(w.message) for w in recwarn
            if issubclass(w.category, (RuntimeWarning, np.exceptions.ComplexWarning))]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_nodata_at_the_floating_point_minimum_gives_no_numpy_warnings(tmp_path, capfd, recwarn, checkpoint, dtype):
    data = np.random.default_rng(0).random((3, H, W)).astype(dtype)
    lowest = np.finfo(dtype).min
    data[:, :, :12] = lowest  # a left strip of no data at the type's most negative value
    src = write_raster(tmp_path / "lowest.tif", data, nodata=float(lowest))
    code, lines = _segment(capfd, checkpoint, src, tmp_path / "a", "--bands", "1,2,3")
    assert code == 0 and lines == [], lines
    assert _numpy_warnings(recwarn) == []
    with rasterio.open(tmp_path / "a" / "lowest_classes.tif") as ds:
        labels = ds.read(1)
    assert (labels[:, :12] == 255).all() and (labels[:, 12:] != 255).all()
    data[:, :, :12] = -9999  # the same raster with an ordinary nodata value: the same classes
    same = write_raster(tmp_path / "ordinary.tif", data, nodata=-9999.0)
    assert _segment(capfd, checkpoint, same, tmp_path / "b", "--bands", "1,2,3")[0] == 0
    with rasterio.open(tmp_path / "b" / "ordinary_classes.tif") as ds:
        assert np.array_equal(ds.read(1), labels)


@pytest.mark.parametrize("dtype", ["complex64", "complex_int16"])
def test_a_complex_raster_is_refused_in_one_line(tmp_path, capfd, recwarn, checkpoint, dtype):
    """Also of GDAL's CInt16 (rasterio's complex_int16, which numpy has no type for)."""
    src = tmp_path / "slc.tif"
    with rasterio.open(src, "w", driver="GTiff", height=H, width=W, count=3, dtype=dtype) as ds:
        if dtype == "complex64":
            data = np.random.default_rng(0).random((3, H, W))
            ds.write((data + 1j * data).astype(dtype))
    code, lines = _segment(capfd, checkpoint, src, tmp_path / "out")
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"farslip: error: slc.tif holds complex values ({dtype})")
    assert _numpy_warnings(recwarn) == []
    assert not (tmp_path / "out").exists()


def test_values_spanning_the_whole_float64_range_keep_their_picture(tmp_path, recwarn):
    """A ramp from -1.7e308 to 1.7e308 (its stretch wider than float64 holds) reads as a ramp, not as one
    colour; one value at any magnitude (a fill of -3.4e38, 2**64 - 1) reads without a numpy warning."""
    from engine.geo.source import RasterSource

    ramp = np.broadcast_to(np.linspace(-1.0, 1.0, W) * 1.7e308, (3, H, W)).copy()
    with RasterSource(write_raster(tmp_path / "ramp.tif", ramp)) as source:
        rgb, valid = source.read_rgb(Box(0, 0, H, W))
    assert valid.all() and np.isfinite(rgb).all()
    grey = rgb[H // 2, :, 0]
    assert (np.diff(grey) >= 0).all() and grey[0] == 0.0 and grey[-1] == 1.0 and 0.3 < grey[W // 2] < 0.7
    for value, dtype in ((-3.4028235e38, "float32"), (2**64 - 1, "uint64"), (1e300, "float64")):
        flat = np.full((3, H, W), value, dtype=dtype)
        with RasterSource(write_raster(tmp_path / f"flat_{dtype}.tif", flat)) as source:
            rgb, valid = source.read_rgb(Box(0, 0, H, W))
        assert valid.all() and np.isfinite(rgb).all() and len(np.unique(rgb)) == 1, dtype
    assert _numpy_warnings(recwarn) == []


def test_an_unknown_bbox_crs_is_one_line_without_gdal_messages(tmp_path, capfd, checkpoint):
    src = write_raster(tmp_path / "ortho.tif", scene(H, W)[0])
    code, lines = _segment(capfd, checkpoint, src, tmp_path / "out", "--bbox", "1,2,3,4", "--bbox-crs", "EPSG:999999")
    assert code == 2 and lines == ["farslip: error: --bbox-crs: unknown CRS 'EPSG:999999'"], lines


# a raster in Berlin (UTM 33N) and a bbox in EPSG:4326 around it: lon 13.40-13.41, lat 52.51-52.52
BERLIN = dict(crs="EPSG:32633", origin=(391000.0, 5820000.0), res=20.0)
LON_LAT = "13.405,52.505,13.41,52.51"


def test_a_bbox_with_latitude_and_longitude_swapped_gets_a_hint(tmp_path, capfd, checkpoint):
    src = write_raster(tmp_path / "berlin.tif", scene(H, W)[0], **BERLIN)
    from engine.geo.source import RasterSource

    with RasterSource(src, bbox=tuple(map(float, LON_LAT.split(","))), bbox_crs="EPSG:4326") as source:
        assert source.window.width > 0  # the right order hits the raster
    code, lines = _segment(capfd, checkpoint, src, tmp_path / "out", "--bbox", "52.505,13.405,52.51,13.41",
                           "--bbox-crs", "EPSG:4326")
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("farslip: error: bbox lies outside the raster")
    assert "did you swap latitude and longitude? a bbox in EPSG:4326 is given lon,lat" in lines[0]
    assert lines[0].endswith(f"here {LON_LAT})")
    # a bbox that misses the raster either way gets no such hint
    code, lines = _segment(capfd, checkpoint, src, tmp_path / "out", "--bbox", "2.3,48.8,2.4,48.9",
                           "--bbox-crs", "EPSG:4326")
    assert code == 2 and len(lines) == 1 and "bbox lies outside the raster" in lines[0]
    assert "swap" not in lines[0]


def test_a_folder_given_as_the_raster_is_named_a_folder(tmp_path, capfd, checkpoint):
    """It said "… is not a raster GDAL can read" (GDAL opens some folders, a .SAFE or an ESRI grid; not this)."""
    folder = tmp_path / "tiles"
    folder.mkdir()
    code, err = _segment(capfd, checkpoint, folder, tmp_path / "out")
    assert code == 2 and err == [f"farslip: error: {folder} is a folder, not a raster GDAL can read: name the rasters "
                                 f"in it (e.g. {folder / '*.tif'})"], err
