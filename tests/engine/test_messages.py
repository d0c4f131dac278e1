"""What a user reads: a failed read says what failed (never "See previous exception for details"), a
raster without geo-reference runs without library warnings, bbox errors print plain coordinates, and
`classify --regions` keeps the regions' own attributes so results join back."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from engine.cli import main
from engine.dense import Segmenter, prepare_image
from engine.errors import InputError
from engine.geo.pipeline import RasterJob, segment_raster
from engine.geo.source import RasterSource
from tests.engine.conftest import TINY, make_clip
from tests.engine.rasters import scene, write_raster


def test_a_corrupt_tile_says_what_failed(tmp_path):
    import rasterio

    path = tmp_path / "bad.tif"
    with rasterio.open(path, "w", driver="GTiff", width=300, height=300, count=3, dtype="uint8", tiled=True,
                       blockxsize=256, blockysize=256, compress="deflate") as ds:
        ds.write(scene(300, 300, seed=7)[0])
    with rasterio.open(path) as ds:
        offset = int(ds.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1))
    data = bytearray(path.read_bytes())
    data[offset:offset + 64] = bytes(range(64))  # the first tile's compressed stream is garbage
    path.write_bytes(bytes(data))
    with pytest.raises(InputError) as err:
        with RasterSource(path) as source:
            source.probe()
    message = str(err.value)
    assert "cannot read the pixels of bad.tif" in message and "IReadBlock failed" in message
    assert "See previous exception" not in message and "\n" not in message


@pytest.mark.parametrize("inspect", [True, False], ids=["opened for a run", "opened to check a request"])
def test_a_truncated_geotiff_is_named_from_its_tile_index(tmp_path, inspect):
    """Opened for a run (`segment`, a batch input: the whole raster is first read decimated) or to check
    a request: the missing tile is found from the file's tile index, without decoding a pixel."""
    path = write_raster(tmp_path / "cut.tif", scene(300, 300, seed=7)[0])
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(InputError) as err:
        with RasterSource(path, inspect_pixels=inspect) as source:
            source.probe()
    message = str(err.value)
    assert "cannot read the pixels of cut.tif (truncated file?): it ends at byte" in message and "\n" not in message


@pytest.mark.parametrize("tiled", [True, False], ids=["tiles", "strips"])
def test_a_truncated_geotiff_is_found_from_its_tile_index_before_a_run(tmp_path, tiled):
    """The check of a request (the area only, no pixels inspected) finds the missing tile without
    decoding one, and says so in one line."""
    path = write_raster(tmp_path / "cut.tif", scene(700, 600, seed=7)[0], tiled=tiled)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(InputError) as err:
        with RasterSource(path, inspect_pixels=False) as source:
            source.probe()
    message = str(err.value)
    assert "cannot read the pixels of cut.tif (truncated file?): it ends at byte" in message
    assert "\n" not in message


def test_a_truncated_file_in_a_format_without_a_tile_index_is_read_to_be_checked(tmp_path):
    import rasterio

    path = tmp_path / "cut.jpg"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(path, "w", driver="JPEG", width=300, height=300, count=3, dtype="uint8") as ds:
            ds.write(scene(300, 300, seed=7)[0])
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(InputError) as err:
        with RasterSource(path, inspect_pixels=False) as source:  # opens: the probe's read finds it
            source.probe()
    message = str(err.value)
    assert "cannot read the pixels of cut.jpg" in message and "\n" not in message and "See previous exception" not in message


def test_a_raster_deleted_while_a_request_is_checked_is_probed_through_its_open_file(tmp_path):
    """The service checks a request's raster (an upload) while another request may delete it: the check
    reads through the file it opened (the API answered 500: the file's size was asked of its path)."""
    from engine.boxes import Box

    path = write_raster(tmp_path / "upload.tif", scene(600, 600, seed=7)[0], tiled=True)
    with RasterSource(path, inspect_pixels=False) as source:
        path.unlink()
        source.probe()
        rgb, valid = source.read_rgb(Box(source.grid.height - 1, source.grid.width - 1, 1, 1))
    assert valid.all() and rgb.shape == (1, 1, 3)


def test_a_png_tile_runs_without_library_warnings(tmp_path, tiny_model):
    import rasterio

    path = tmp_path / "tile.png"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(path, "w", driver="PNG", width=70, height=60, count=3, dtype="uint8") as ds:
            ds.write(scene(60, 70)[0])
    segmenter = Segmenter(tiny_model, "water; grass")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        segment_raster(RasterJob(str(path), str(tmp_path / "out")), segmenter)
        frozen = scene(32, 32)[0].transpose(1, 2, 0).copy()
        frozen.flags.writeable = False  # as PIL hands images out
        prepare_image(frozen)
    noise = [f"{w.category.__name__}: {w.message}" for w in caught
             if any(k in str(w.message) for k in ("geotransform", "'crs' was not provided", "not writable"))]
    assert noise == []


def test_float_images_are_not_changed_in_place():
    image = np.full((16, 16, 3), 1.0005, dtype=np.float32)
    prepare_image(image)
    assert np.all(image == np.float32(1.0005))


def test_bbox_errors_print_plain_coordinates(tmp_path):
    path = write_raster(tmp_path / "in.tif", scene(100, 100)[0], crs="EPSG:3857", origin=(-2832800.5, 5200000.0))
    with pytest.raises(InputError) as err:
        RasterSource(path, bbox=(0.0, 0.0, 10.0, 10.0))
    assert "raster bounds -2832800.5,5199950,-2832750.5,5200000 in EPSG:3857" in str(err.value)
    assert "e+" not in str(err.value)


def test_classify_regions_keeps_the_input_attributes(tmp_path, capsys):
    import pyogrio.raw
    import shapely

    from engine.geo.vectors import write_features

    checkpoint = tmp_path / "tiny.pt"
    torch.save({"epoch": 1, "name": "tiny", "state_dict": make_clip().state_dict()}, checkpoint)
    src = write_raster(tmp_path / "in.tif", scene(200, 200)[0])
    boxes = [shapely.box(500000 + 10 * i, 5199930, 500030 + 10 * i, 5199960) for i in range(3)]
    regions = tmp_path / "fields.gpkg"
    from rasterio.crs import CRS

    write_features(regions, boxes, {"field_id": np.array([7, 8, 9], dtype=np.int32),
                                    "owner": np.array(["a", "b", "c"], dtype=object),
                                    "class": np.array(["wheat", "maize", "rye"], dtype=object)},
                   CRS.from_epsg(32633), "fields")
    assert main(["classify", str(src), "--classes", "water; grass; building", "--regions", str(regions),
                 "-o", str(tmp_path / "out"), "--model", str(checkpoint), "--arch", TINY, "-q"]) == 0
    meta, _, _, columns = pyogrio.raw.read(tmp_path / "out" / "fields_labels.gpkg")
    got = dict(zip(meta["fields"], columns))
    assert list(got["field_id"]) == [7, 8, 9] and list(got["owner"]) == ["a", "b", "c"]
    assert list(got["input_class"]) == ["wheat", "maize", "rye"]
    assert set(got["class"]) <= {"water", "grass", "building"} and len(got["score"]) == 3
