"""Outputs that cannot be written, and rasters whose georeference cannot be right: one line and a non-zero
exit, never a traceback — a full disk (whichever library was writing when it filled: GDAL, SQLite, Python),
a geographic raster that runs past the poles — and a --nodata value its type cannot hold is no warning."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from engine.cli import main
from engine.errors import output_failure
from tests.engine.conftest import TINY
from tests.engine.rasters import scene, write_raster

ROOT = Path(__file__).resolve().parents[2]


def _segment(capsys, checkpoint, src, out, *extra) -> tuple[int, list[str]]:
    code = main(["segment", str(src), "--classes", "water; grass", "-o", str(out), "--model", str(checkpoint),
                 "--arch", TINY, "-q", *extra])
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("raised", [
    OSError(errno.ENOSPC, "No space left on device"),
    rasterio.errors.RasterioIOError("out/classes.tif: No space left on device"),
    RuntimeError("Failed to write feature: database or disk is full"),  # pyogrio's words, from SQLite
], ids=["python", "gdal", "sqlite"])
def test_a_full_disk_is_said_whichever_library_was_writing(raised, tmp_path):
    line = output_failure(raised, tmp_path / "out")
    assert line == (f"cannot write the outputs in {tmp_path / 'out'}: the disk is full; free some space or choose "
                    "another output folder")
    assert output_failure(ValueError("cannot convert float NaN to integer"), tmp_path) is None  # a bug stays one


def test_a_read_only_file_system_is_not_told_to_free_space(tmp_path):
    line = output_failure(OSError(errno.EROFS, "Read-only file system"), tmp_path / "out")
    assert line == f"cannot write the outputs in {tmp_path / 'out'}: the file system is read-only; choose another output folder"


def _small_disk(tmp_path, size: str):
    """A file system (tmpfs) of `size` — where the machine lets the tests mount one."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                                                        str(mount)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small file system here")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


@pytest.fixture
def tiny_disk(tmp_path):
    yield from _small_disk(tmp_path, "64k")


@pytest.fixture
def two_mb_disk(tmp_path):
    """Larger than the 1 MB under which a disk counts as full once a failed run has cleaned up."""
    yield from _small_disk(tmp_path, "2m")


def test_a_run_that_fills_the_disk_ends_in_one_line_and_leaves_nothing(tiny_disk, tmp_path, checkpoint, capsys):
    src = write_raster(tmp_path / "ortho.tif", scene(400, 400)[0])
    code, lines = _segment(capsys, checkpoint, src, tiny_disk / "out")
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"farslip: error: cannot write the outputs in {tiny_disk / 'out'}: the disk is full")
    assert not list((tiny_disk / "out").iterdir()) if (tiny_disk / "out").exists() else True


def test_a_search_that_fills_the_disk_ends_in_one_line_and_leaves_nothing(two_mb_disk, tmp_path, checkpoint,
                                                                           capsys):
    """The heat map fills it while libtiff writes (its error surfaces later, as GDAL failing to read the
    file back): the disk is judged before the partial outputs are removed, which frees it again."""
    src = write_raster(tmp_path / "ortho.tif", scene(1200, 1200)[0])  # a float32 heat map of several MB
    out = two_mb_disk / "out"
    code = main(["search", str(src), "--query", "water", "-o", str(out), "--model", str(checkpoint), "--arch", TINY,
                 "-q"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and lines[-1].startswith(f"farslip: error: cannot write the outputs in {out}: the disk is full"), \
        lines
    assert not list(out.iterdir()) and shutil.disk_usage(two_mb_disk).free > 1 << 20


def test_a_rerun_that_fills_the_disk_keeps_the_earlier_results_whole(two_mb_disk, tmp_path, checkpoint, capsys):
    """`--overwrite` into a folder whose disk the new heat map fills: the earlier run's heat map, boxes and
    summary are all still there, as they were — not some of them, nor a mix of the two runs."""
    out = two_mb_disk / "out"

    def search(size: int) -> int:
        (tmp_path / f"{size}").mkdir()
        src = write_raster(tmp_path / f"{size}" / "ortho.tif", scene(size, size)[0])
        return main(["search", str(src), "--query", "water", "-o", str(out), "--model", str(checkpoint),
                     "--arch", TINY, "-q", "--overwrite"])

    assert search(200) == 0
    earlier = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(earlier) == ["ortho_boxes.gpkg", "ortho_heatmap.tif", "ortho_search_summary.json"]
    capsys.readouterr()
    assert search(1200) == 2
    assert "the disk is full" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == earlier


@pytest.mark.parametrize("fails_at", ["second", "cancel"])
def test_outputs_put_in_place_together_or_not_at_all(tmp_path, fails_at):
    """A run whose second output cannot be put in place (on Windows: the earlier one is open in QGIS), or
    that is cancelled after the first: the first is taken back and the earlier run's files are back."""
    import threading

    from engine.errors import Cancelled, OutputError
    from engine.geo.workdirs import publish_together, work_folder

    out = tmp_path / "out"
    out.mkdir()
    for name in ("a.json", "b.json", "old_only.json"):  # an earlier run's outputs
        (out / name).write_text(f"earlier {name}")
    cancel = threading.Event()

    def second() -> None:
        if fails_at == "second":
            raise OSError(errno.EACCES, "Permission denied", str(out / "b.json"))
        (work / "b.json").replace(out / "b.json")

    def first() -> None:
        (work / "a.json").replace(out / "a.json")
        if fails_at == "cancel":
            cancel.set()

    with pytest.raises(Cancelled if fails_at == "cancel" else OutputError) as raised:
        with work_folder(out) as work:
            (work / "a.json").write_text("new a")
            (work / "b.json").write_text("new b")
            publish_together(work, [(first, out / "a.json"), (second, out / "b.json")], cancel,
                             replaces=[out / "old_only.json"])
    assert {p.name: p.read_text() for p in out.iterdir()} == {
        "a.json": "earlier a.json", "b.json": "earlier b.json", "old_only.json": "earlier old_only.json"}
    if fails_at == "second":  # (Windows: an output open in QGIS)
        assert str(raised.value) == (f"cannot write the outputs in {out}: b.json cannot be replaced (Permission "
                                     "denied): is it open in another program, e.g. QGIS? Close it, or choose "
                                     "another output name or folder")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="a file-size limit (RLIMIT_FSIZE) is set in a forked child")
@pytest.mark.parametrize("command", [["segment", "--classes", "water; grass"], ["search", "--query", "water"],
                                     ["classify", "--classes", "water; grass", "--cell-px", "64"],
                                     ["classify", "--classes", "water; grass", "--regions", "REGIONS"]],
                         ids=["segment", "search", "classify-grid", "classify-regions"])
def test_a_file_size_limit_reached_is_one_line_naming_it(command, tmp_path, checkpoint):
    """A file that may grow no further (4 GB on a FAT32 stick, a `ulimit -f`): one line saying so, exit 2,
    nothing left in the output folder — not the traceback of whichever library failed next."""
    src = write_raster(tmp_path / "ortho.tif", scene(400, 400)[0])
    if "REGIONS" in command:
        import shapely

        from engine.geo.vectors import write_features

        with rasterio.open(src) as ds:
            left, bottom, *_ = ds.bounds
            crs = ds.crs
        regions = tmp_path / "fields.gpkg"
        write_features(regions, [shapely.box(left + 10, bottom + 10, left + 90, bottom + 90)],
                       {"name": np.array(["a"], dtype=object)}, crs, "fields")
        command = [str(regions) if part == "REGIONS" else part for part in command]
    out = tmp_path / "out"
    _assert_size_limit_said([command[0], str(src), *command[1:], "-o", str(out), "--model", str(checkpoint),
                             "--arch", TINY, "-q"], out)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="a file-size limit (RLIMIT_FSIZE) is set in a forked child")
def test_an_accuracy_report_that_cannot_be_written_whole_leaves_none_of_its_files(tmp_path, checkpoint, capsys):
    src = write_raster(tmp_path / "ortho.tif", scene(200, 200)[0])
    code, lines = _segment(capsys, checkpoint, src, tmp_path / "seg", "--no-polygons")
    assert code == 0, lines
    import shapely

    from engine.geo.vectors import write_features

    with rasterio.open(src) as ds:
        left, bottom, right, top = ds.bounds
        crs = ds.crs
    reference = tmp_path / "reference.gpkg"
    write_features(reference, [shapely.box(left, bottom, right, (bottom + top) / 2)],
                   {"class": np.array(["water"], dtype=object)}, crs, "reference")
    out = tmp_path / "acc"
    # the report's JSON and CSV fit under the limit, its confusion image does not
    _assert_size_limit_said(["accuracy", str(tmp_path / "seg" / "ortho_classes.tif"), "--reference", str(reference),
                             "-o", str(out), "-q"], out)


def _assert_size_limit_said(args: list[str], out: Path, limit: int = 4096) -> None:
    """Run the CLI with a file-size limit: one line naming it, exit 2, nothing left in `out`."""
    import resource

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    run = subprocess.run([sys.executable, "-m", "engine.cli", *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, preexec_fn=limited, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert lines[-1] == (f"farslip: error: cannot write the outputs in {out}: a file reached the largest size "
                         "allowed there (4 GB a file on a FAT32 drive, or this process's file-size limit, ulimit -f); "
                         "choose an output folder on another drive (NTFS, exFAT, ext4, APFS) or raise the limit")
    assert not list(out.iterdir())


def test_a_geographic_raster_past_the_poles_is_refused_in_one_line(tmp_path, checkpoint, capsys):
    """An image given EPSG:4326 without a geotransform: its rows run to -300°."""
    src = tmp_path / "no_transform.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(src, "w", driver="GTiff", width=400, height=300, count=3, dtype="uint8",
                           crs="EPSG:4326") as ds:
            ds.write(scene(300, 400)[0])
    code, lines = _segment(capsys, checkpoint, src, tmp_path / "out")
    assert code == 2 and len(lines) == 1, lines
    assert "reaches latitude -300° in its geographic CRS (EPSG:4326), beyond ±90°" in lines[0]
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_a_global_grid_a_hair_past_the_pole_gets_finite_areas(tmp_path, checkpoint, capsys):
    src = tmp_path / "polar.tif"
    pixel = 5e-6
    with rasterio.open(src, "w", driver="GTiff", width=120, height=100, count=3, dtype="uint8", crs="EPSG:4326",
                       transform=Affine(pixel, 0, 10.0, 0, -pixel, 90.0001)) as ds:
        ds.write(scene(100, 120)[0])
    code, lines = _segment(capsys, checkpoint, src, tmp_path / "out", "--gsd", "0.5")
    assert code == 0, lines
    summary = json.loads((tmp_path / "out" / "polar_summary.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    areas = [c["area_m2"] for c in summary["classes"]]
    assert all(np.isfinite(a) for a in areas) and sum(areas) > 0


def test_a_nodata_value_the_type_cannot_hold_matches_nothing_and_warns_nothing(tmp_path, checkpoint, capfd):
    src = write_raster(tmp_path / "float.tif", scene(120, 120)[0].astype(np.float32) / 255)
    code = main(["segment", str(src), "--classes", "water; grass", "-o", str(tmp_path / "out"), "--model",
                 str(checkpoint), "--arch", TINY, "-q", "--nodata=1e40"])
    assert code == 0
    err = capfd.readouterr().err
    assert "Warning" not in err and "overflow" not in err, err
