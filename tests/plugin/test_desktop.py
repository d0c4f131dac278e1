"""The desktop check: real QGIS under Xvfb, plugin installed from its zip, engine found and started from the
dock, a segmentation, a labelled region and a Processing grid, a screenshot of each step."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not (shutil.which("qgis") and shutil.which("xvfb-run")), reason="needs qgis and xvfb-run")
def test_real_qgis_runs_a_segmentation_and_saves_a_screenshot(tmp_path):
    out = subprocess.run(["bash", str(ROOT / "tests" / "desktop" / "check.sh"), "", str(tmp_path / "desktop")],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "desktop check: ok" in out.stdout
    shot = tmp_path / "desktop" / "shot.png"
    assert shot.stat().st_size > 20_000  # a real window, not an empty image
    steps = sorted(p.name for p in (tmp_path / "desktop").glob("[0-9][0-9]-*.png"))
    assert steps == ["01-installed.png", "02-setup-installed.png", "03-setup-found-engine.png",
                     "04-engine-ready.png", "05-segmented.png", "06-label-dialog.png", "07-processing-grid.png"]
    assert (tmp_path / "desktop" / "engine-env" / "bin" / "farslip").exists()  # made by the set-up in QGIS
    project = tmp_path / "desktop" / "project" / "farslip"
    assert len(list(project.glob("*_building-road-tree_*/*classes.tif"))) == 1  # the run, in the project folder
    assert (project / "farslip_labels.gpkg").exists()
