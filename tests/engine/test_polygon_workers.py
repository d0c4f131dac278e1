"""Polygons traced in worker processes (`FARSLIP_POLYGON_WORKERS`) are the polygons traced in the
writer thread — the same features, attributes and order — and a cancelled run leaves no worker behind."""

from __future__ import annotations

import threading

import numpy as np
import psutil
import pyogrio
import pytest
import shapely

from engine.dense import Segmenter
from engine.errors import Cancelled
from engine.geo.pipeline import RasterJob, segment_raster
from tests.engine.rasters import scene, write_raster

CLASSES = "water,river; grass; building,roof; road"


def _workers() -> list:
    """Worker processes of this process still alive (not multiprocessing's resource tracker, which
    stays for the session)."""
    return [c for c in psutil.Process().children(recursive=True) if "spawn_main" in " ".join(c.cmdline())]


def _features(path):
    _, _, geometry, fields = pyogrio.raw.read(path)
    return [shapely.from_wkb(g) for g in geometry], fields


def test_workers_trace_the_same_polygons_as_the_writer_thread(tmp_path, tiny_model, monkeypatch):
    src = write_raster(tmp_path / "in.tif", scene(700, 650, seed=3)[0], res=0.5)
    segmenter = Segmenter(tiny_model, CLASSES)
    results = {}
    for workers in ("1", "2"):
        monkeypatch.setenv("FARSLIP_POLYGON_WORKERS", workers)
        out = tmp_path / f"out{workers}"
        summary = segment_raster(RasterJob(str(src), str(out), block=256), segmenter)  # 9 blocks, seams between
        results[workers] = summary, _features(out / "in_polygons.gpkg")
    (one, (geoms1, fields1)), (two, (geoms2, fields2)) = results["1"], results["2"]
    assert (one["timing"]["polygon_workers"], two["timing"]["polygon_workers"]) == (1, 2)
    assert one["polygons"] == two["polygons"] == len(geoms1) > 10
    assert all(np.array_equal(a, b) for a, b in zip(fields1, fields2))
    assert all(shapely.equals_exact(a, b, tolerance=0) for a, b in zip(geoms1, geoms2))
    assert not _workers()  # they ended with the run


def test_a_cancelled_run_ends_its_polygon_workers(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("FARSLIP_POLYGON_WORKERS", "2")
    src = write_raster(tmp_path / "in.tif", scene(600, 600)[0], res=0.5)
    cancel = threading.Event()

    def progress(done: int, total: int) -> None:
        if done >= total // 2:
            cancel.set()

    with pytest.raises(Cancelled):
        segment_raster(RasterJob(str(src), str(tmp_path / "out"), block=224), Segmenter(tiny_model, CLASSES),
                       progress=progress, cancel=cancel)
    assert list((tmp_path / "out").iterdir()) == []
    assert not _workers()
