"""Palette (colour-table) rasters and rasters georeferenced by ground control points only, as a user
sees them: a palette raster is segmented as the colours its table gives (the same class map as the
same image stored as RGB, resampled to the working GSD alike); the outputs of a GCP-only raster
carry its GCPs and their CRS (or its RPCs) and no geotransform, so GDAL and QGIS place them as they
place it."""

from __future__ import annotations

import json
import warnings
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from rasterio.control import GroundControlPoint
from rasterio.enums import ColorInterp
from rasterio.errors import NotGeoreferencedWarning
from rasterio.rpc import RPC

from engine.cli import main
from engine.dense import Segmenter
from engine.errors import InputError
from engine.geo.pipeline import RasterJob, segment_raster
from engine.geo.source import RasterSource
from tests.engine.conftest import TINY
from tests.engine.rasters import palette_of, scene, write_gcp_raster, write_palette_raster, write_raster

H, W = 96, 128
CLASSES = "water; grass; building; road"
FINE = dict(crs="EPSG:32633", origin=(500000.0, 5200000.0), res=0.25)  # read at the default 0.5 m: resampled ×2


@pytest.fixture(scope="module")
def segmenter(tiny_model):
    return Segmenter(tiny_model, CLASSES)


def _model_args(checkpoint):
    return ["--model", str(checkpoint), "--arch", TINY, "-q"]


def _labels(path):
    with rasterio.open(path) as ds:
        return ds.read(1), ds.crs, ds.transform


@pytest.fixture(scope="module")
def image():
    """A scene quantised to a colour table: (indices [H, W], table, the same image as RGB [3, H, W])."""
    indices, table = palette_of(scene(H, W, seed=4)[0])
    lut = np.array([table[i][:3] for i in range(len(table))], dtype=np.uint8)
    return indices, table, np.ascontiguousarray(lut[indices].transpose(2, 0, 1))


# --- palette rasters ---------------------------------------------------------------------------------

def test_a_palette_raster_is_segmented_as_the_colours_of_its_table(tmp_path, segmenter, image):
    indices, table, rgb = image
    palette = write_palette_raster(tmp_path / "palette.tif", indices, table, **FINE)
    plain = write_raster(tmp_path / "plain.tif", rgb, colorinterp=None, **FINE)
    got = segment_raster(RasterJob(str(palette), str(tmp_path / "a"), scores=True), segmenter)
    want = segment_raster(RasterJob(str(plain), str(tmp_path / "b"), scores=True), segmenter)
    assert got["working_gsd_m"] == 0.5 and got["working_size"] == [W // 2, H // 2]  # resampled on read
    labels, crs, transform = _labels(tmp_path / "a" / "palette_classes.tif")
    assert np.array_equal(labels, _labels(tmp_path / "b" / "plain_classes.tif")[0])
    with rasterio.open(tmp_path / "a" / "palette_scores.tif") as a:
        with rasterio.open(tmp_path / "b" / "plain_scores.tif") as b:
            assert np.array_equal(a.read(), b.read())
    with rasterio.open(palette) as src:  # outputs on the source grid, with its georeference
        assert (crs, transform, labels.shape) == (src.crs, src.transform, (src.height, src.width))
    assert [c["pixels"] for c in got["classes"]] == [c["pixels"] for c in want["classes"]]
    assert got["bands"] == [1, 2, 3]
    assert sum("colours from the raster's colour table" in note for note in got["notes"]) == 1


def test_the_nodata_index_of_a_palette_raster_is_no_data(tmp_path, segmenter, image):
    indices, table, rgb = image
    indices = indices.copy()
    indices[:, :20] = 250  # a left strip of the declared nodata index (the table's entry: opaque black)
    table = {**table, 250: (0, 0, 0, 255)}
    palette = write_palette_raster(tmp_path / "palette.tif", indices, table, nodata=250, **FINE)
    masked = write_raster(tmp_path / "masked.tif", rgb, **FINE)  # the same colours, that strip masked out
    with rasterio.open(masked, "r+") as ds:
        ds.write_mask(np.where(indices == 250, 0, 255).astype(np.uint8))
    got = segment_raster(RasterJob(str(palette), str(tmp_path / "a")), segmenter)
    segment_raster(RasterJob(str(masked), str(tmp_path / "b")), segmenter)
    labels, _, _ = _labels(tmp_path / "a" / "palette_classes.tif")
    assert (labels[:, :20] == 255).all() and (labels[:, 20:] != 255).all()
    assert np.array_equal(labels, _labels(tmp_path / "b" / "masked_classes.tif")[0])
    assert got["nodata_pixels"] == 20 * H


@pytest.mark.parametrize("mask_kind", ["alpha band", "alpha band and nodata index", "internal mask"])
def test_a_palette_raster_with_an_alpha_band_or_mask_keeps_it(tmp_path, segmenter, image, mask_kind):
    """`gdalwarp -dstalpha` of a palette raster gives a palette band and an alpha band (beside a nodata
    index, GDAL's mask of the palette band is that index alone); a GeoTIFF may carry an internal mask
    instead: either is no data, as for the same colours stored as RGB."""
    indices, table, rgb = image
    alpha = np.full((H, W), 255, np.uint8)
    alpha[:, W - 24:] = 0  # a right strip warped out of the source
    alpha[:8, :] = 0
    palette = tmp_path / "palette.tif"
    if mask_kind.startswith("alpha band"):
        nodata = 250 if "nodata" in mask_kind else None  # an index the image does not use
        assert not (indices == 250).any()
        write_raster(palette, np.stack([indices, alpha]), colorinterp=[ColorInterp.palette, ColorInterp.alpha],
                     nodata=nodata, **FINE)
        with rasterio.open(palette, "r+") as ds:
            ds.write_colormap(1, table)
    else:
        write_palette_raster(palette, indices, table, **FINE)
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(palette, "r+") as ds:
            ds.write_mask(alpha)
    masked = write_raster(tmp_path / "masked.tif", rgb, **FINE)
    with rasterio.open(masked, "r+") as ds:
        ds.write_mask(alpha)
    got = segment_raster(RasterJob(str(palette), str(tmp_path / "a")), segmenter)
    want = segment_raster(RasterJob(str(masked), str(tmp_path / "b")), segmenter)
    labels, _, _ = _labels(tmp_path / "a" / "palette_classes.tif")
    assert (labels[alpha == 0] == 255).all() and (labels[alpha > 0] != 255).all()
    assert np.array_equal(labels, _labels(tmp_path / "b" / "masked_classes.tif")[0])
    assert got["nodata_pixels"] == want["nodata_pixels"] == int((alpha == 0).sum())
    assert got["bands"] == [1, 2, 3]
    assert sum("alpha band or mask" in note for note in got["notes"]) == 1


def test_transparent_entries_of_a_colour_table_are_no_data(tmp_path, image):
    indices, table, rgb = image
    indices = indices.copy()
    indices[:10] = 230
    path = tmp_path / "tile.png"  # PNG keeps the table's alpha (tRNS); a GeoTIFF's table has none
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver="PNG", width=W, height=H, count=1, dtype="uint8") as ds:
            ds.write(indices[None])
            ds.write_colormap(1, {**table, 230: (10, 20, 30, 0)})
    from engine.boxes import Box

    with RasterSource(path) as source:  # (a PNG has no CRS: read at its native pixels)
        assert any("colour table" in note and "no data" in note for note in source.notes)
        pixels, valid = source.read_pixels(Box(0, 0, H, W))
    assert not valid[:10].any() and valid[10:].all()
    assert np.array_equal(pixels[:, 10:], rgb[:, 10:])


def test_bands_of_a_palette_raster_number_the_red_green_blue_of_its_table(tmp_path, capsys, checkpoint, image):
    indices, table, rgb = image
    palette = write_palette_raster(tmp_path / "palette.tif", indices, table, **FINE)
    plain = write_raster(tmp_path / "plain.tif", rgb, **FINE)
    for path, out in ((palette, "a"), (plain, "b")):
        assert main(["segment", str(path), "--classes", CLASSES, "-o", str(tmp_path / out), "--bands", "3,2,1",
                     *_model_args(checkpoint)]) == 0
    assert np.array_equal(_labels(tmp_path / "a" / "palette_classes.tif")[0],
                          _labels(tmp_path / "b" / "plain_classes.tif")[0])
    capsys.readouterr()
    assert main(["segment", str(palette), "--classes", CLASSES, "-o", str(tmp_path / "c"), "--bands", "1,2,4",
                 *_model_args(checkpoint)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("farslip: error: band 4 does not exist: palette.tif is a "
                                                   "palette raster"), lines


# --- rasters georeferenced by ground control points only ---------------------------------------------

GCPS = [GroundControlPoint(0, 0, 500000.0, 5200048.0), GroundControlPoint(0, W, 500064.0, 5200048.0),
        GroundControlPoint(H, 0, 500000.0, 5200000.0), GroundControlPoint(H, W, 500064.0, 5200000.0)]


def _gcps(path):
    with rasterio.open(path) as ds:
        gcps, crs = ds.gcps
        return [(g.row, g.col, g.x, g.y) for g in gcps], crs, ds.crs, ds.transform


def test_outputs_of_a_gcp_only_raster_carry_its_gcps_and_no_geotransform(tmp_path, segmenter):
    src = write_gcp_raster(tmp_path / "scan.tif", scene(H, W, seed=5)[0], GCPS)
    summary = segment_raster(RasterJob(str(src), str(tmp_path / "out"), scores=True, simplify=0.0), segmenter)
    want_gcps, want_crs, _, _ = _gcps(src)
    assert want_crs == "EPSG:32633"
    for product in ("scan_classes.tif", "scan_scores.tif"):
        gcps, gcp_crs, crs, transform = _gcps(tmp_path / "out" / product)
        # the GCPs and their CRS as the input's, and no geotransform (GDAL's identity, like the input's):
        # not the y-up pixel frame an explicit geotransform would give
        assert (gcps, gcp_crs, crs, transform) == (want_gcps, want_crs, None, Affine.identity()), product
    assert any("ground control points only" in note for note in summary["notes"])
    assert summary["crs"] is None and all(c["area_m2"] is None for c in summary["classes"])
    from pyogrio.raw import read

    _, _, geometry, _ = read(tmp_path / "out" / "scan_polygons.gpkg")  # in pixel space, as for no geo-reference
    assert shapely.box(0, -H, W, 0).buffer(1e-9).contains(shapely.union_all(shapely.from_wkb(geometry)))


# a sensor model as a level-1 product carries one (synthetic: linear in longitude and latitude, around Paris)
SCENE_RPC = RPC(height_off=250.0, height_scale=500.0, lat_off=48.85, lat_scale=0.05, line_den_coeff=[1.0] + [0.0] * 19,
                line_num_coeff=[0.0, 0.0, -1.0] + [0.0] * 17, line_off=H / 2, line_scale=H / 2, long_off=2.35,
                long_scale=0.05, samp_den_coeff=[1.0] + [0.0] * 19, samp_num_coeff=[0.0, 1.0] + [0.0] * 18,
                samp_off=W / 2, samp_scale=W / 2)


def _rpcs(path):
    with rasterio.open(path) as ds:
        return ds.rpcs.to_dict() if ds.rpcs else None, ds.crs, ds.transform


def test_outputs_of_an_rpc_only_raster_carry_its_rpcs_and_no_geotransform(tmp_path, segmenter):
    """A satellite's level-1 product (Pléiades, WorldView primary): placed by RPCs, no geotransform; its
    outputs were given a y-up pixel geotransform, and QGIS drew them flipped against the input."""
    src = write_gcp_raster(tmp_path / "primary.tif", scene(H, W, seed=5)[0], rpcs=SCENE_RPC)
    summary = segment_raster(RasterJob(str(src), str(tmp_path / "out"), scores=True), segmenter)
    want, _, _ = _rpcs(src)
    for product in ("primary_classes.tif", "primary_scores.tif"):
        assert _rpcs(tmp_path / "out" / product) == (want, None, Affine.identity()), product
    assert any("georeferenced by RPCs only" in note for note in summary["notes"])
    assert summary["crs"] is None and all(c["area_m2"] is None for c in summary["classes"])
    segment_raster(RasterJob(str(src), str(tmp_path / "win"), window=(10, 20, 60, 40)), segmenter)
    moved, _, _ = _rpcs(tmp_path / "win" / "primary_classes.tif")
    assert moved == {**want, "line_off": want["line_off"] - 20, "samp_off": want["samp_off"] - 10}


def test_a_window_of_a_gcp_only_raster_gets_its_gcps_moved_with_it(tmp_path, segmenter):
    src = write_gcp_raster(tmp_path / "scan.tif", scene(H, W, seed=5)[0], GCPS)
    segment_raster(RasterJob(str(src), str(tmp_path / "out"), window=(10, 20, 60, 40)), segmenter)
    gcps, gcp_crs, crs, transform = _gcps(tmp_path / "out" / "scan_classes.tif")
    assert gcps == [(g.row - 20, g.col - 10, g.x, g.y) for g in GCPS]
    assert (gcp_crs, crs, transform) == ("EPSG:32633", None, Affine.identity())


@pytest.mark.parametrize("area, message", [
    (dict(gsd=1.0), "--gsd needs a geotransform; scan.tif is georeferenced by 4 ground control points only"),
    (dict(bbox=(500000, 5200000, 500030, 5200030), bbox_crs="EPSG:32633"),
     "the raster is georeferenced by 4 ground control points only (no geotransform), so a bbox in a CRS"),
])
def test_gsd_and_a_bbox_in_a_crs_are_refused_on_a_gcp_only_raster(tmp_path, area, message):
    src = write_gcp_raster(tmp_path / "scan.tif", scene(H, W, seed=5)[0], GCPS)
    with pytest.raises(InputError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        RasterSource(src, **area)
    with RasterSource(src, bbox=(10, -60, 80, -20)) as source:  # in pixel space, as for no geo-reference
        w = source.window
        assert (w.col_off, w.row_off, w.width, w.height) == (10, 20, 70, 40)


def test_segment_batch_leaves_a_gcp_only_raster_out_of_the_mosaic(tmp_path, capsys, checkpoint):
    scan = write_gcp_raster(tmp_path / "scan.tif", scene(H, W, seed=5)[0], GCPS)
    ortho = write_raster(tmp_path / "ortho.tif", scene(H, W, seed=6)[0], origin=(500100.0, 5200000.0))
    out = tmp_path / "out"
    assert main(["segment-batch", str(scan), str(ortho), "--classes", CLASSES, "-o", str(out),
                 *_model_args(checkpoint)]) == 0
    summary = json.loads((out / "batch_summary.json").read_text())
    assert summary["done"] == 2 and summary["failed"] == 0
    sources = [e.text for e in ElementTree.parse(out / "mosaic_classes.vrt").iter("SourceFilename")]
    assert sources == ["ortho_classes.tif"]
    assert _gcps(out / "scan_classes.tif")[:2] == _gcps(scan)[:2]
