"""The window path on the device: pixels uploaded once and normalised there, blocks read ahead and
written behind, results put back on the source grid in one pass, GDAL's cache and threads, and
`--compile` — each compared with a plain reference computation."""

from __future__ import annotations

import ctypes
import glob
import os
import threading
from contextlib import closing

import numpy as np
import pytest
import rasterio
import torch
from rasterio.warp import Resampling, reproject

from engine.boxes import Box
from engine.dense import InferenceOptions, Segmenter, prepare_image
from engine.dense.prompts import NO_CLASS
from engine.geo.background import BackgroundWriter, prefetched
from engine.geo.blocks import block_boxes, raster_blocks
from engine.geo.pipeline import RasterJob, segment_raster
from engine.geo.products import CPU_SCORING_ROWS, scored_block
from engine.geo.rasters import gdal_env, quantise
from engine.geo.source import RasterSource
from tests.engine.rasters import scene, write_raster

CLASSES = "water,river; grass; building,roof; road"


@pytest.fixture(scope="module")
def segmenter(tiny_model):
    return Segmenter(tiny_model, CLASSES)


def _blocked(segmenter, path, block=256, **source_args) -> tuple[torch.Tensor, np.ndarray]:
    """Logits and validity of a whole raster assembled from `raster_blocks`."""
    with RasterSource(path, **source_args) as source:
        g = source.grid
        logits = torch.zeros(len(segmenter.prompts.names), g.height, g.width)
        valid = np.zeros((g.height, g.width), bool)
        with closing(raster_blocks(segmenter, source, block)) as blocks:
            for core, lg, ok in blocks:
                logits[:, core.y:core.y + core.h, core.x:core.x + core.w] = lg.cpu()
                valid[core.y:core.y + core.h, core.x:core.x + core.w] = ok.working
    return logits, valid


def _whole_image_reference(segmenter, path, **source_args) -> torch.Tensor:
    """The same raster read at once as float RGB with nodata filled by the CLIP mean colour (the
    engine's earlier CPU path), normalised on the CPU, one sliding pass."""
    with RasterSource(path, **source_args) as source:
        g = source.grid
        rgb, _ = source.read_rgb(Box(0, 0, g.height, g.width))
    return segmenter.logits(prepare_image(rgb)).cpu()


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_blocks_uploaded_as_read_equal_one_pass_over_the_prepared_image(tmp_path, segmenter, dtype):
    rgb, _ = scene(410, 530, seed=7)
    data = np.maximum(rgb, 1) if dtype == "uint8" else rgb.astype(np.uint16) * 50 + 300  # uint16: stretched
    data = data.copy()
    data[:, :30, :] = 0  # a nodata border: no prediction there, and it must not colour its neighbours
    data[:, 200:260, 300:330] = 0
    path = write_raster(tmp_path / f"{dtype}.tif", data, nodata=0)
    got, valid = _blocked(segmenter, path)
    want = _whole_image_reference(segmenter, path)
    assert not valid[:30].any() and valid[30:200].all()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=2e-5)
    labels_got = segmenter.labels(got)
    labels_want = segmenter.labels(want)
    top2 = torch.topk(want, 2, dim=0).values
    clear = (top2[0] - top2[1]) > 1e-4  # pixels not at a tie between two names
    assert torch.equal(labels_got[clear], labels_want[clear])


@pytest.mark.parametrize("shape, res, gsd", [((301, 457), 0.25, 0.4), ((530, 610), 0.25, 0.35),
                                             ((257, 300), 0.5, 0.3)], ids=["coarser", "coarser-odd", "finer"])
def test_put_back_on_the_source_grid_is_gdals_nearest_neighbour(tmp_path, shape, res, gsd):
    path = write_raster(tmp_path / "in.tif", scene(*shape)[0], res=res)
    with RasterSource(path, gsd=gsd) as source:
        g = source.grid
        working = np.arange(g.height * g.width, dtype=np.int32).reshape(g.height, g.width)
        ours = np.full((source.height, source.width), -1, dtype=np.int32)
        for row in block_boxes(g.height, g.width, 96):
            for core in row:
                rect, (part,) = source.to_source_grid(core, working[core.y:core.y + core.h, core.x:core.x + core.w])
                assert (ours[rect.y:rect.y + rect.h, rect.x:rect.x + rect.w] == -1).all()  # a partition
                ours[rect.y:rect.y + rect.h, rect.x:rect.x + rect.w] = part
        gdal = np.full_like(ours, -1)
        reproject(working, gdal, src_transform=source.working_transform(), src_crs=source.crs,
                  dst_transform=source.transform, dst_crs=source.crs, resampling=Resampling.nearest)
    assert (ours >= 0).all()
    assert (ours == gdal).mean() > 0.999  # GDAL may round a pixel centre exactly on a border either way
    assert np.abs(ours // g.width - gdal // g.width).max() <= 1 and np.abs(ours % g.width - gdal % g.width).max() <= 1


def test_resampled_run_equals_the_working_grid_classes_put_back(tmp_path, segmenter):
    src = write_raster(tmp_path / "in.tif", scene(330, 410, seed=2)[0], res=0.25)
    segment_raster(RasterJob(str(src), str(tmp_path / "out"), gsd=0.4, polygons=False), segmenter)
    logits, valid = _blocked(segmenter, src, gsd=0.4)
    labels = segmenter.labels(logits).numpy()
    with RasterSource(src, gsd=0.4) as source, rasterio.open(tmp_path / "out" / "in_classes.tif") as cls:
        g = source.grid
        rect, (expected,) = source.to_source_grid(Box(0, 0, g.height, g.width), labels)
        assert (rect.h, rect.w) == (cls.height, cls.width) == (330, 410)
        np.testing.assert_array_equal(cls.read(1), expected)


@pytest.mark.parametrize("threshold", [0.0, 0.35])
def test_a_block_scored_in_bands_of_rows_equals_one_pass(tiny_model, threshold):
    """On a CPU a block's class map, confidence and scores are made a band of rows at a time: the
    same numbers as the whole block at once, for any height (here not a multiple of the band)."""
    segmenter = Segmenter(tiny_model, CLASSES, InferenceOptions(prob_threshold=threshold))
    generator = torch.Generator().manual_seed(3)
    height = 2 * CPU_SCORING_ROWS + 37
    logits = torch.rand(len(segmenter.prompts.names), height, 150, generator=generator) * 0.2 - 0.1
    logits[:, :5] = 0.05  # ties between all names: the first class (or none, under the threshold) in both
    probs = segmenter.probabilities(logits)
    best, labels = probs.max(dim=0)  # the first best class, as in one pass over the probabilities
    fill = NO_CLASS if threshold else 0
    labels = torch.where(best < threshold, fill, labels).to(torch.uint8)
    banded = scored_block(segmenter, logits, confidence=True, scores=True)
    for got, expected in zip(banded, [labels, quantise(best), quantise(probs)], strict=True):
        assert torch.equal(got, expected)
    if threshold:
        assert (labels == NO_CLASS).any() and (labels != NO_CLASS).any()  # some pixels fell below it
    assert len(scored_block(segmenter, logits, confidence=False, scores=False)) == 1


@pytest.mark.parametrize("gsd", [None, 0.4], ids=["native", "resampled"])
def test_reading_in_several_threads_gives_the_same_outputs(tmp_path, segmenter, monkeypatch, gsd):
    data = write_raster(tmp_path / "in.tif", np.maximum(scene(700, 650, seed=4)[0], 1), res=0.25, nodata=0)
    with rasterio.open(data, "r+") as ds:  # a nodata hole across block borders
        ds.write(np.zeros((3, 90, 400), np.uint8), window=rasterio.windows.Window(100, 200, 400, 90))
    outputs = {}
    for threads in ("0", "1", "3"):  # read when needed (a CPU's default), in one thread, in three
        monkeypatch.setenv("FARSLIP_READ_THREADS", threads)
        out = tmp_path / f"out{threads}"
        segment_raster(RasterJob(str(data), str(out), gsd=gsd, block=224, scores=True, polygons=False), segmenter)
        with rasterio.open(out / "in_classes.tif") as cls, rasterio.open(out / "in_scores.tif") as sc:
            outputs[threads] = cls.read(), sc.read()
    assert (outputs["1"][0] == 255).any()  # the hole is no data
    for threads in ("0", "3"):
        assert np.array_equal(outputs["1"][0], outputs[threads][0]) and np.array_equal(outputs["1"][1], outputs[threads][1])


def _gdal_cache_bytes() -> int:
    """GDALGetCacheMax64 of the GDAL that rasterio runs on."""
    import rasterio._env  # noqa: F401  (loads libgdal)

    libs = glob.glob(os.path.join(os.path.dirname(rasterio.__file__), "..", "rasterio.libs", "libgdal*"))
    gdal = ctypes.CDLL(libs[0]) if libs else ctypes.CDLL(None)
    gdal.GDALGetCacheMax64.restype = ctypes.c_int64
    return gdal.GDALGetCacheMax64()


def test_gdal_cache_is_set_in_megabytes_and_threads_are_on(monkeypatch):
    monkeypatch.setenv("FARSLIP_GDAL_CACHE_MB", "96")
    with gdal_env():
        assert _gdal_cache_bytes() == 96 * 1024 * 1024  # rasterio hands a number to GDAL as bytes
        assert rasterio.env.getenv()["GDAL_NUM_THREADS"] == "ALL_CPUS"


def test_reads_run_ahead_in_order_and_stop_when_the_consumer_stops():
    ran = []

    def task(k):
        def read():
            ran.append(k)
            if k == 7:
                raise OSError("block 7 is corrupt")
            return k
        return read

    assert list(prefetched(task(k) for k in range(5))) == [0, 1, 2, 3, 4]
    assert list(prefetched((task(k) for k in range(7)), workers=4)) == list(range(7))  # in order
    ran.clear()
    with closing(prefetched(task(k) for k in range(100))) as reads:
        assert next(reads) == 0
    assert len(ran) <= 4  # at most `depth` + 1 blocks were read, then the reader stopped
    with pytest.raises(OSError, match="block 7"):
        list(prefetched(task(k) for k in range(20)))
    # no reading thread (a CPU's default): each block is read when it is asked for, and no sooner
    ran.clear()
    with closing(prefetched((task(k) for k in range(100)), workers=0)) as reads:
        assert [next(reads), next(reads)] == [0, 1]
    assert ran == [0, 1]
    with pytest.raises(OSError, match="block 7"):
        list(prefetched((task(k) for k in range(20)), workers=0))


@pytest.mark.parametrize("workers", [1, 0], ids=["writer-thread", "in-line"])
def test_a_failed_write_reaches_the_caller_and_later_writes_are_dropped(workers):
    written, threads = [], set()

    def write(k):
        threads.add(threading.get_ident())
        if k == 2:
            raise OSError("disk full")
        written.append(k)

    with pytest.raises(OSError, match="disk full"):
        with BackgroundWriter(depth=2, workers=workers) as writer:
            for k in range(50):
                writer.submit(write, k)
    assert written[:2] == [0, 1] and len(written) <= (4 if workers else 2)
    assert (threading.get_ident() in threads) == (workers == 0)


@pytest.mark.parametrize("gsd", [None, 0.4], ids=["native", "resampled"])
def test_writing_in_line_or_in_a_thread_gives_the_same_outputs(tmp_path, segmenter, monkeypatch, gsd):
    """A CPU's default writes each block in the computing thread, a GPU's in a writer thread: same files."""
    data = write_raster(tmp_path / "in.tif", scene(520, 470, seed=6)[0], res=0.25)
    outputs = {}
    for threads in ("0", "1"):
        monkeypatch.setenv("FARSLIP_WRITE_THREADS", threads)
        out = tmp_path / f"out{threads}"
        summary = segment_raster(RasterJob(str(data), str(out), gsd=gsd, block=224, scores=True), segmenter)
        with rasterio.open(out / "in_classes.tif") as cls, rasterio.open(out / "in_scores.tif") as sc:
            outputs[threads] = cls.read(), sc.read(), summary["classes"], summary["polygons"]
    assert outputs["0"][3] > 0
    assert np.array_equal(outputs["0"][0], outputs["1"][0]) and np.array_equal(outputs["0"][1], outputs["1"][1])
    assert outputs["0"][2:] == outputs["1"][2:]  # per-class pixels and areas, number of polygons


@pytest.mark.slow
def test_compile_gives_the_same_classes(tmp_path, tiny_clip):
    """`--compile` (torch.compile of the dense forward) changes speed, not results (~1-2 min on 2 CPUs)."""
    from engine.models import wrap_model
    from tests.engine.conftest import TINY

    src = write_raster(tmp_path / "in.tif", scene(300, 380, seed=4)[0])
    plain = Segmenter(wrap_model(tiny_clip, TINY, device="cpu"), CLASSES)
    compiled = Segmenter(wrap_model(tiny_clip, TINY, device="cpu"), CLASSES, InferenceOptions(compile=True))
    assert compiled.model.dense_forward is not None and plain.model.dense_forward is None
    a = segment_raster(RasterJob(str(src), str(tmp_path / "a"), scores=True, polygons=False), plain)
    b = segment_raster(RasterJob(str(src), str(tmp_path / "b"), scores=True, polygons=False), compiled)
    with rasterio.open(tmp_path / "a" / "in_scores.tif") as x, rasterio.open(tmp_path / "b" / "in_scores.tif") as y:
        assert np.abs(x.read().astype(int) - y.read().astype(int)).max() <= 1
    assert [c["pixels"] for c in a["classes"]] == pytest.approx([c["pixels"] for c in b["classes"]], abs=20)


def test_many_class_names_make_blocks_smaller_not_the_memory_larger(tiny_model):
    """A block's logit sums hold a float32 plane per class name: 254 names (what a client may ask) in
    blocks of 8192 px (likewise) would take 68 GB, 64 names 17 GB. The block shrinks to fit instead (any block gives the same results,
    `test_geotiff::test_many_blocks_give_the_same_result_as_one`); a few classes keep the block asked for."""
    from engine.geo.blocks import CPU_BLOCK, SUMS_BYTES, working_block

    many = Segmenter(tiny_model, "; ".join(f"class {i}" for i in range(64)))
    for asked in (8192, 4096):
        block = working_block(many, asked)
        assert block * block * 4 * 64 <= SUMS_BYTES and block >= 2048, (asked, block)
    assert working_block(many, None) == CPU_BLOCK
    few = Segmenter(tiny_model, CLASSES)
    assert working_block(few, 4096) == 4096 and working_block(few, None) == CPU_BLOCK
    assert working_block(few, 64) == few.crop  # never smaller than one crop
