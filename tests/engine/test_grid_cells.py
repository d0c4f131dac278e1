"""`classify --cell`: cells tile the raster from its top-left corner, edge cells clipped to the
raster, never overlapping: the grid's polygons cover the raster exactly once."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import shapely

from engine.dense.scenes import SceneClassifier
from engine.geo.scenes import GridJob, classify_grid
from tests.engine.rasters import scene, write_raster


@pytest.fixture(scope="module")
def classifier(tiny_model):
    return SceneClassifier(tiny_model, "water; grass; building; road")


def _grid(path):
    from pyogrio.raw import read

    meta, _, wkb, fields = read(path)
    return shapely.from_wkb(wkb), dict(zip(meta["fields"], fields))


@pytest.mark.parametrize("height, width", [(250, 330), (60, 90), (60, 130)],
                         ids=["edges-clipped", "smaller-than-a-cell", "a-row-of-cells"])
def test_grid_cells_cover_the_raster_once(tmp_path, classifier, height, width):
    src = write_raster(tmp_path / "g.tif", scene(height, width, seed=3)[0])
    summary = classify_grid(GridJob(str(src), str(tmp_path / "out"), cell_m=50.0), classifier)  # 100 px cells
    geoms, fields = _grid(tmp_path / "out" / "g_grid.gpkg")
    with rasterio.open(src) as ds:
        raster = shapely.box(*ds.bounds)
    rows, cols = -(-height // 100), -(-width // 100)
    assert summary["cells"] == len(geoms) == rows * cols
    assert sum(g.area for g in geoms) == pytest.approx(raster.area)  # no overlap ...
    assert shapely.union_all(geoms).symmetric_difference(raster).area == pytest.approx(0.0, abs=1e-6)  # ... no gap
    last = geoms[(fields["row"] == rows - 1) & (fields["col"] == cols - 1)][0]
    assert last.area == pytest.approx(((height - 1) % 100 + 1) * ((width - 1) % 100 + 1) * 0.25)
    assert np.all(fields["valid_fraction"] == 1.0) and np.all(fields["class_index"] >= 0)
    one_cell = [n for n in summary["notes"] if "the grid is one cell" in n]
    assert len(one_cell) == int(height <= 100 and width <= 100), summary["notes"]
    if one_cell:  # (a cell of 1e12 m made one cell with no word about it)
        assert one_cell[0].startswith(f"the cell (50 m) is not smaller than the area ({width} x {height} px)")
