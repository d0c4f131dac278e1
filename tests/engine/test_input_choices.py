"""Choices made for an input are said, not silent: the bands used when guessed, a large constant edge
frame without a nodata tag (a warning), and `nodata` (--nodata VALUE) to declare it no data."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
from rasterio.enums import ColorInterp

from engine.dense import Segmenter
from engine.geo.pipeline import RasterJob, segment_raster
from engine.geo.source import RasterSource
from tests.engine.conftest import TINY
from tests.engine.rasters import scene, write_raster


@pytest.fixture(scope="module")
def segmenter(tiny_model):
    return Segmenter(tiny_model, "water; grass; building; road")


def _bands_notes(source):
    return [n for n in source.notes if "used as red, green, blue" in n]


def test_guessed_bands_are_said_in_one_line(tmp_path):
    data = np.concatenate([scene(64, 64)[0].astype(np.uint16) * 40, np.full((1, 64, 64), 9000, np.uint16)])
    plain = write_raster(tmp_path / "four.tif", data,
                         colorinterp=[ColorInterp.gray, ColorInterp.undefined, ColorInterp.undefined,
                                      ColorInterp.undefined])
    with RasterSource(plain) as source:
        assert source.bands == (1, 2, 3)
        assert _bands_notes(source) == ["four.tif: no red/green/blue colour interpretation; bands 1,2,3 of 4 used "
                                        "as red, green, blue (--bands chooses others)"]
    rgb = write_raster(tmp_path / "rgb.tif", data[:3], colorinterp=[ColorInterp.red, ColorInterp.green,
                                                                    ColorInterp.blue])
    with RasterSource(rgb) as source, RasterSource(plain, bands=(3, 2, 1)) as chosen:
        assert not _bands_notes(source) and not _bands_notes(chosen)


@pytest.mark.parametrize("descriptions, bands", [
    (["Blue", "Green", "Red", "NIR"], (3, 2, 1)),  # a BGRN stack (PlanetScope 4-band order)
    (["coastal_blue", "blue", "green_i", "green", "yellow", "red", "rededge", "nir"], (6, 4, 2)),  # 8-band
    (["B02", "B03", "B04", "B08"], (1, 2, 3)),  # band numbers alone say nothing for sure: guessed, said so
], ids=["bgrn", "eight-band", "numbers-only"])
def test_band_descriptions_choose_red_green_and_blue(tmp_path, segmenter, descriptions, bands):
    """A stack that describes its bands but sets no colour interpretation is read as its descriptions say:
    the same classes as the image stored as RGB."""
    rgb = scene(96, 96, seed=8)[0]
    data = np.zeros((len(descriptions), 96, 96), np.uint8)
    for colour, band in enumerate(bands):
        data[band - 1] = rgb[colour]
    path = write_raster(tmp_path / "stack.tif", data, colorinterp=[ColorInterp.undefined] * len(descriptions))
    with rasterio.open(path, "r+") as ds:
        for band, text in enumerate(descriptions, start=1):
            ds.set_band_description(band, text)
    plain = write_raster(tmp_path / "plain.tif", rgb)
    got = segment_raster(RasterJob(str(path), str(tmp_path / "a"), polygons=False), segmenter)
    segment_raster(RasterJob(str(plain), str(tmp_path / "b"), polygons=False), segmenter)
    assert got["bands"] == list(bands)
    with rasterio.open(tmp_path / "a" / "stack_classes.tif") as a, \
            rasterio.open(tmp_path / "b" / "plain_classes.tif") as b:
        assert np.array_equal(a.read(1), b.read(1))
    said = [n for n in got["notes"] if "used as red, green, blue" in n]
    assert len(said) == 1 and ("descriptions say" in said[0]) == (descriptions[0] != "B02")


def _framed(tmp_path, frame=40, size=200):
    rgb = scene(size, size, seed=6)[0]
    rgb = np.maximum(rgb, 1)  # the image itself holds no pure zero
    rgb[:, :frame], rgb[:, -frame:], rgb[:, :, :frame], rgb[:, :, -frame:] = 0, 0, 0, 0
    return write_raster(tmp_path / "framed.tif", rgb), frame


def test_a_large_untagged_zero_frame_is_warned_about(tmp_path, segmenter):
    src, frame = _framed(tmp_path)
    summary = segment_raster(RasterJob(str(src), str(tmp_path / "out")), segmenter)
    warnings = [n for n in summary["notes"] if n.startswith("warning:")]
    assert len(warnings) == 1 and "64% of framed.tif is an edge frame of value 0" in warnings[0]
    assert "--nodata 0" in warnings[0]
    assert summary["nodata_pixels"] == 0  # as the user was warned: classified
    tagged = write_raster(tmp_path / "tagged.tif", rasterio.open(src).read(), nodata=0)
    with RasterSource(tagged) as source, RasterSource(src, nodata=0) as declared:
        assert not source.notes and not declared.notes
    small, _ = _framed(tmp_path, frame=1)
    with RasterSource(small) as source:
        assert not source.notes  # a 1-pixel frame (2 %) is not worth a word


def test_a_frame_of_other_values_per_band_is_not_offered_nodata_and_a_tiny_raster_has_no_frame(tmp_path):
    """--nodata is one value for every band: a frame of (10, 20, 30) gets a hint that can leave it out; and
    a few pixels, all different, are no frame (a corner, met in its row and its column, was counted twice)."""
    rgb = np.maximum(scene(200, 200, seed=6)[0], 40)
    rgb[:, :20] = rgb[:, -20:] = np.array([10, 20, 30], dtype=np.uint8)[:, None, None]
    with RasterSource(write_raster(tmp_path / "frame.tif", rgb)) as source:
        assert len(source.notes) == 1 and "edge frame of values 10,20,30 (bands 1,2,3)" in source.notes[0]
        assert "--nodata" not in source.notes[0] and '-srcnodata "10 20 30"' in source.notes[0]
    tiny = np.random.default_rng(1).permutation(27).reshape(3, 3, 3).astype(np.uint8)  # 27 different values
    with RasterSource(write_raster(tmp_path / "tiny.tif", tiny)) as source:
        assert not [n for n in source.notes if "edge frame" in n]


@pytest.mark.parametrize("gsd", [None, 0.7], ids=["native", "resampled"])
def test_a_run_finds_the_frame_of_a_large_uint8_raster_in_its_own_reads(tmp_path, segmenter, monkeypatch, gsd):
    """A uint8 raster too large to read twice (made so here by lowering the limit) is not read
    beforehand; the run finds the frame in the pixels it reads: the same warning, also when resampled."""
    import engine.geo.source as source_module

    monkeypatch.setattr(source_module, "_CHEAP_READ_PIXELS", 0)
    src, _ = _framed(tmp_path)
    with RasterSource(src) as source:
        assert not source.notes  # not read whole before a run
    summary = segment_raster(RasterJob(str(src), str(tmp_path / "out"), gsd=gsd, polygons=False), segmenter)
    warnings = [n for n in summary["notes"] if n.startswith("warning:")]
    assert len(warnings) == 1 and "is an edge frame of value 0" in warnings[0]
    share = int(warnings[0].split("% of")[0].removeprefix("warning: "))
    assert share == pytest.approx(64, abs=3)  # 1 − (120/200)²; the resampled grid blurs its inner edge
    small, _ = _framed(tmp_path, frame=1)
    summary = segment_raster(RasterJob(str(small), str(tmp_path / "small"), gsd=gsd, polygons=False), segmenter)
    assert summary["notes"] == []


def test_the_cli_prints_the_runs_frame_warning_once(tmp_path, tiny_clip, capsys):
    from engine.cli import main

    checkpoint = tmp_path / "tiny.pt"
    torch.save({"epoch": 1, "name": "tiny", "state_dict": tiny_clip.state_dict()}, checkpoint)
    src, _ = _framed(tmp_path)
    code = main(["segment", str(src), "--classes", "water; grass", "-o", str(tmp_path / "out"), "--no-polygons",
                 "--model", str(checkpoint), "--arch", TINY, "-q"])
    err = capsys.readouterr().err
    assert code == 0
    assert err.count("farslip: warning: 64% of framed.tif is an edge frame of value 0") == 1


def test_nodata_value_blanks_the_frame_and_keeps_the_stretch_clean(tmp_path, segmenter):
    src, frame = _framed(tmp_path)
    summary = segment_raster(RasterJob(str(src), str(tmp_path / "out"), nodata=0, gsd=0.7), segmenter)
    with rasterio.open(tmp_path / "out" / "framed_classes.tif") as ds:
        labels = ds.read(1)
    inner = np.zeros(labels.shape, dtype=bool)
    inner[frame:-frame, frame:-frame] = True
    assert np.all(labels[~inner] == 255)
    assert np.all(labels[frame + 2:-frame - 2, frame + 2:-frame - 2] != 255)
    assert summary["nodata_value"] == 0 and summary["notes"] == []

    data = rasterio.open(src).read().astype(np.uint16) * 50  # 16-bit: the stretch ignores the frame
    wide = write_raster(tmp_path / "wide.tif", data)
    with RasterSource(wide) as with_frame, RasterSource(wide, nodata=0) as without:
        inside = data[:, frame:-frame, frame:-frame].reshape(3, -1)
        assert without.stretch[:, 0] == pytest.approx(np.percentile(inside, 2, axis=1))
        assert with_frame.stretch[0, 0] == 0.0


def test_segment_batch_takes_the_nodata_value_too(tmp_path, segmenter):
    from engine.batch.local import LocalExecutor
    from engine.batch.run import BatchSettings, run_batch

    src, frame = _framed(tmp_path)
    summary = run_batch([str(src)], BatchSettings(str(tmp_path / "out"), nodata=0), segmenter,
                        LocalExecutor(segmenter))
    assert summary["done"] == 1 and summary["per_input"][0]["notes"] == []
    with rasterio.open(tmp_path / "out" / "framed_classes.tif") as ds:
        labels = ds.read(1)
    assert np.all(labels[:frame] == 255) and np.all(labels[frame:-frame, frame:-frame] != 255)
    untagged = run_batch([str(src)], BatchSettings(str(tmp_path / "plain")), segmenter, LocalExecutor(segmenter))
    assert "edge frame of value 0" in untagged["per_input"][0]["notes"][0]  # the warning reaches batch runs


@pytest.mark.parametrize("area", [{"window": (40, 30, 60, 60)}, {"bbox": (500020.0, 5199970.0, 500100.0, 5200030.0)}],
                         ids=["window", "bbox"])
def test_an_area_reaching_beyond_the_raster_is_clipped_and_said(tmp_path, segmenter, area):
    """64 × 64 px at 0.5 m from (500000, 5200000): the part of the area inside the raster is processed, and
    the summary's notes say it was clipped."""
    src = write_raster(tmp_path / "in.tif", scene(64, 64)[0])
    summary = segment_raster(RasterJob(str(src), str(tmp_path / "out"), polygons=False, **area), segmenter)
    assert summary["window"] == ([40, 30, 24, 34] if "window" in area else [40, 0, 24, 60])
    assert sum("reaches beyond the raster" in note for note in summary["notes"]) == 1
