"""A cancel stops a run in whatever phase it comes — while blocks are computed, or after the last one
(writing, the polygons' merge, publishing) — and leaves no output behind."""

from __future__ import annotations

import threading

import pytest

from engine.dense import Segmenter
from engine.errors import Cancelled
from engine.geo.pipeline import RasterJob, segment_raster
from tests.engine.rasters import scene, write_raster


@pytest.mark.parametrize("when", ["first batch", "last batch"])
def test_a_cancel_in_any_phase_stops_the_run_and_leaves_nothing(tmp_path, tiny_model, when):
    src = write_raster(tmp_path / "tile.tif", scene(600, 600)[0])
    out = tmp_path / "out"
    cancel = threading.Event()
    seen, totals = [], []

    def progress(done: int, total: int) -> None:
        seen.append(done)
        totals.append(total)
        if (when == "first batch" and done > 0) or done >= total:
            cancel.set()

    job = RasterJob(str(src), str(out), gsd=0.5, block=256, scores=True, polygons=True)
    with pytest.raises(Cancelled):
        segment_raster(job, Segmenter(tiny_model, "water; grass; road"), progress=progress, cancel=cancel)
    assert [p.name for p in out.iterdir()] == []  # no class map, scores, polygons or summary, no temp folder
    if when == "first batch":
        assert max(seen) < totals[-1]  # stopped before the end
