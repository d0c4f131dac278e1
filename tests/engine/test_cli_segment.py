"""`farslip segment` as a user runs it: outputs on real samples, one-line errors, Ctrl-C."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio

from engine.cli import main
from tests.engine.conftest import TINY
from tests.engine.rasters import scene, write_raster

ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = ROOT.parent / "shared" / "data"


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _model_args(checkpoint):
    return ["--model", str(checkpoint), "--arch", TINY, "-q"]


@pytest.mark.parametrize("name", ["oem_koeln_50.tif", "rgbn_5m.tif"])
def test_real_samples_give_outputs_gdal_opens_with_the_right_crs_and_bounds(tmp_path, capsys, checkpoint, name):
    sample = SHARED_DATA / name
    if not sample.exists():
        pytest.skip("../shared/data is not present")
    code, _, err = run_cli(capsys, "segment", str(sample), "--classes", "building,roof; road; tree; water; grass",
                           "-o", str(tmp_path), "--scores", *_model_args(checkpoint))
    assert code == 0, err
    stem = sample.stem
    with rasterio.open(sample) as src:
        for product in ("classes", "scores"):
            with rasterio.open(tmp_path / f"{stem}_{product}.tif") as out:
                assert out.crs == src.crs
                assert out.bounds == pytest.approx(src.bounds)
                assert (out.width, out.height) == (src.width, src.height)
    summary = json.loads((tmp_path / f"{stem}_summary.json").read_text())
    assert summary["bands"] == [1, 2, 3]
    assert sum(c["pixels"] for c in summary["classes"]) + summary["nodata_pixels"] == summary["width"] * summary["height"]


def test_no_crs_warns_and_keeps_the_geotransform(tmp_path, capsys, checkpoint):
    """A geotransform without a CRS (a world file without .prj): outputs on the same coordinates, no CRS, no
    areas, said in one line that tells how to give the file a CRS."""
    src = write_raster(tmp_path / "plain.tif", scene(120, 150)[0], crs=None)
    code, _, err = run_cli(capsys, "segment", str(src), "--classes", "a; b", "-o", str(tmp_path / "o"),
                           *_model_args(checkpoint))
    assert code == 0
    warning = [line for line in err.splitlines() if "has no CRS" in line]
    assert len(warning) == 1 and "geotransform" in warning[0] and "-a_srs" in warning[0]
    summary = json.loads((tmp_path / "o" / "plain_summary.json").read_text())
    assert summary["crs"] is None and summary["classes"][0]["area_m2"] is None
    with rasterio.open(src) as a, rasterio.open(tmp_path / "o" / "plain_classes.tif") as b:
        assert b.crs is None and b.transform == a.transform


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    good = write_raster(tmp_path / "good.tif", scene(64, 64)[0])
    two_band = write_raster(tmp_path / "two.tif", np.zeros((2, 32, 32), dtype=np.uint8))
    text = tmp_path / "notes.tif"
    text.write_text("this is not a raster")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    out = str(tmp_path / "out")
    pipe = tmp_path / "pipe.tif"
    os.mkfifo(pipe)
    return {
        "missing file": (["segment", str(tmp_path / "nope.tif"), "--classes", "a", "-o", out], "input raster not found"),
        "a pipe": (["segment", str(pipe), "--classes", "a", "-o", out], "is not a file but a pipe, socket or device"),
        "not a raster": (["segment", str(text), "--classes", "a", "-o", out], "is not a raster GDAL can read"),
        "two bands": (["segment", str(two_band), "--classes", "a", "-o", out], "needs 3: pass --bands"),
        "bad band": (["segment", str(good), "--classes", "a", "--bands", "1,2,5", "-o", out], "band 5 does not exist"),
        "bbox outside": (["segment", str(good), "--classes", "a", "--bbox", "0,0,10,10", "-o", out],
                         "bbox lies outside the raster"),
        "window outside": (["segment", str(good), "--classes", "a", "--window", "70,50,30,30", "-o", out],
                           "lies outside the raster"),
        "unwritable out": (["segment", str(good), "--classes", "a", "-o", str(locked / "sub")],
                           "cannot write to output folder"),
        "out is a file": (["segment", str(good), "--classes", "a", "-o", str(text)], "is a file, not a folder"),
        "line break in out": (["segment", str(good), "--classes", "a", "-o", str(tmp_path / "out\nput")],
                              "holds a line break or another control character"),
        "unknown model": (["segment", str(good), "--classes", "a", "-o", out, "--model", "farslip9"],
                          "unknown model 'farslip9'"),
        "empty classes": (["segment", str(good), "--classes", " ; ", "-o", out], "no classes given"),
        "gsd far too fine": (["segment", str(good), "--classes", "a", "--gsd", "3e-05", "-o", out],
                             "finer than the raster's"),
    }


@pytest.mark.parametrize("case", ["missing file", "a pipe", "not a raster", "two bands", "bad band", "bbox outside",
                                  "window outside", "unwritable out", "out is a file", "line break in out",
                                  "unknown model", "empty classes", "gsd far too fine"])
def test_bad_input_gives_one_line_and_a_nonzero_exit(tmp_path, capsys, case):
    if case == "unwritable out" and os.geteuid() == 0:
        pytest.skip("root can write anywhere")
    args, message = _bad_inputs(tmp_path)[case]
    # a reader waiting on the pipe (GDAL opening it) would wait for ever: a writer that comes and goes ends
    # such a wait, so that the test fails instead
    unblock = threading.Timer(60, _open_and_close_for_writing, [tmp_path / "pipe.tif"])
    unblock.start()
    try:
        code, _, err = run_cli(capsys, *args)
    finally:
        unblock.cancel()
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("farslip: error:"), err
    assert message in lines[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def _open_and_close_for_writing(pipe: Path) -> None:
    try:
        os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:  # no reader: nothing waits
        pass


def test_an_input_the_user_may_not_read_is_named_so(tmp_path):
    """A raster without read permission is "permission denied", not "not a raster" (run without root's
    right to read anything: setpriv drops it where the tests run as root)."""
    src = write_raster(tmp_path / "secret.tif", scene(32, 32)[0])
    src.chmod(0o000)
    command = [sys.executable, "-m", "engine.cli", "segment", str(src), "--classes", "a; b", "-o", str(tmp_path / "o")]
    if os.geteuid() == 0:
        drop = ["setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search"]
        if shutil.which("setpriv") is None or subprocess.run([*drop, "true"], capture_output=True).returncode != 0:
            pytest.skip("running as root without a setpriv that may drop the right to read any file")
        command = [*drop, *command]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        f"farslip: error: cannot read {src}: Permission denied"], done.stderr
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_help_and_bad_input_are_answered_before_the_network_code_loads(tmp_path):
    """`farslip --help`, `segment --help` and a missing input — for every command that runs the
    network — answer without importing torch or fetching a model (seconds on a laptop, half a minute
    offline): the checks run first, the network code only for a run."""
    probe = ("import sys\nfrom engine.cli import main\ntry:\n    code = main(sys.argv[1:])\n"
             "except SystemExit as exit:\n    code = exit.code\nprint(code, 'torch' in sys.modules)")
    missing, out = str(tmp_path / "missing.tif"), str(tmp_path / "out")
    labels = tmp_path / "labels.geojson"
    labels.write_text('{"type": "FeatureCollection", "features": []}')
    cases = {("--help",): None, ("segment", "--help"): None,
             ("segment", missing, "--classes", "a; b", "-o", out): "input raster not found",
             ("segment-batch", missing, str(tmp_path / "other.tif"), "--classes", "a; b", "-o", out):
                 "input raster not found: " + missing + " (none of the 2 inputs exists)",
             ("classify", missing, "--classes", "a; b", "--cell", "50", "-o", out): "input raster not found",
             ("classify", missing, "--classes", "a; b", "-o", out): "give either --cell",
             ("search", missing, "--query", "a pool", "-o", out): "input raster not found",
             ("classes", "learn", missing, "--classes", "a; b", "--labels", str(labels),
              "-o", str(tmp_path / "site.classes.json")): "input raster not found"}
    for args, message in cases.items():
        done = subprocess.run([sys.executable, "-c", probe, *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)
        code, torch_loaded = done.stdout.strip().splitlines()[-1].split()
        assert torch_loaded == "False", args
        assert (code == "0") == (message is None), (args, done.stderr)
        if message is not None:
            assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, (args, done.stderr)


def test_unwritable_output_file_location_is_refused(tmp_path, capsys):
    good = write_raster(tmp_path / "good.tif", scene(64, 64)[0])
    blocker = tmp_path / "file-not-folder"
    blocker.write_text("x")
    code, _, err = run_cli(capsys, "segment", str(good), "--classes", "a", "-o", str(blocker / "out"))
    assert code != 0 and "cannot write to output folder" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("sent, code, said", [(signal.SIGINT, 130, "interrupted"),
                                              (signal.SIGTERM, 143, "stopped by SIGTERM"),
                                              (signal.SIGHUP, 129, "stopped by SIGHUP")],
                         ids=["ctrl-c", "sigterm", "sighup"])
def test_ctrl_c_or_termination_leaves_no_output(tmp_path, checkpoint, sent, code, said):
    """Ctrl-C, and what `timeout`, systemd, docker or QProcess.terminate() send, stop a run the same way."""
    src = write_raster(tmp_path / "big.tif", scene(1800, 1800)[0])
    out = tmp_path / "out"

    def working() -> bool:  # the run's temporary folder exists from its first block until it ends
        return out.exists() and any(p.name.startswith(".farslip-") for p in out.iterdir())

    for _ in range(3):  # the run takes ~1 s: a fast or lucky one may end before the pause, then again
        proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "segment", str(src), "--classes", "a; b; c",
                                 "-o", str(out), "--model", str(checkpoint), "--arch", TINY, "--block", "256"],
                                cwd=ROOT, stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        deadline = time.time() + 120
        while time.time() < deadline and not working() and proc.poll() is None:
            time.sleep(0.002)
        time.sleep(0.05)  # into its blocks
        proc.send_signal(signal.SIGSTOP)  # paused, so that it is surely still running when the signal comes
        if working():
            break
        proc.send_signal(signal.SIGCONT)
        proc.communicate(timeout=60)
        shutil.rmtree(out, ignore_errors=True)
    else:
        pytest.fail("the run ended before it could be interrupted, 3 times")
    proc.send_signal(sent)
    proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert said in err.strip().splitlines()[-1]
    assert list(out.iterdir()) == []


def test_work_folders_a_killed_run_left_are_removed_by_the_next_run(tmp_path, capsys, checkpoint):
    """`kill -9` (or a power cut) leaves a run's hidden work folder, partial outputs and all: the next run into
    that folder removes it — not one of a process still running, nor one of another computer's run (a shared
    network folder)."""
    from engine.geo.workdirs import make_workdir

    src = write_raster(tmp_path / "s.tif", scene(64, 64)[0])
    out = tmp_path / "out"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    ours = make_workdir(out)  # this (live) process's
    host = ours.name.split("-")[2]
    killed = out / f".farslip-work-{host}-{dead_pid}-x1y2z3"
    other_computer = out / f".farslip-work-{'0' * 8 if host != '0' * 8 else '1' * 8}-{dead_pid}-a1b2c3"
    for folder in (killed, other_computer):
        folder.mkdir()
        (folder / "classes.tif").write_bytes(b"\0" * 1000)
    code, _, err = run_cli(capsys, "segment", str(src), "--classes", "a; b", "-o", str(out), *_model_args(checkpoint))
    assert code == 0, err
    assert not killed.exists() and other_computer.exists() and ours.exists()
    assert (out / "s_classes.tif").exists()


def test_hand_written_files_and_values(tmp_path, capsys, checkpoint):
    """What users type and save: a class list from Windows Notepad (byte-order mark, CRLF), one in
    another encoding, a bbox west of Greenwich given as a separate argument, a --name with folders."""
    src = write_raster(tmp_path / "west.tif", scene(64, 64)[0], crs="EPSG:4326", origin=(-122.5, 37.8), res=1e-5)
    notepad = tmp_path / "classes.txt"
    notepad.write_bytes("\ufeffbâtiment\r\nroute\r\n".encode("utf-8"))
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "segment", str(src), "--classes", f"@{notepad}", "-o", str(out),
                           "--bbox", "-122.4999,37.7995,-122.4995,37.7999", *_model_args(checkpoint))
    assert code == 0, err
    summary = json.loads((out / "west_summary.json").read_text(encoding="utf-8"))
    assert [c["name"] for c in summary["classes"]] == ["bâtiment", "route"]
    assert summary["window"][2:] == [40, 40]  # the bbox, not the whole raster

    windows = tmp_path / "cp1252.txt"
    windows.write_bytes("bâtiment\nroute\n".encode("cp1252"))
    code, _, err = run_cli(capsys, "segment", str(src), "--classes", f"@{windows}", "-o", str(tmp_path / "o2"),
                           *_model_args(checkpoint))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "cp1252.txt is not UTF-8 text" in lines[0], err

    with pytest.raises(SystemExit) as exit:
        main(["segment", str(src), "--classes", "a", "-o", str(tmp_path / "o3"), "--name", "../escaped"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit.value.code == 2 and len(lines) == 1 and "must be a file name without folders" in lines[0]
    assert not list(tmp_path.glob("escaped*"))


def test_a_rerun_into_the_same_folder_needs_overwrite_and_then_replaces_everything(tmp_path, capsys, checkpoint):
    src = write_raster(tmp_path / "tile.tif", scene(96, 96)[0])
    out = tmp_path / "out"
    first = run_cli(capsys, "segment", str(src), "--classes", "water; grass", "-o", str(out), *_model_args(checkpoint))
    assert first[0] == 0, first[2]
    assert (out / "tile_polygons.gpkg").exists()
    code, _, err = run_cli(capsys, "segment", str(src), "--classes", "tree; road", "-o", str(out), "--no-polygons",
                           *_model_args(checkpoint))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--overwrite" in err
    assert json.loads((out / "tile_summary.json").read_text())["prompts"] == "water; grass"  # untouched
    code, _, err = run_cli(capsys, "segment", str(src), "--classes", "tree", "-o", str(out),
                           "--model", str(tmp_path / "not-loaded.pt"), "-q")
    assert code == 2 and "--overwrite" in err  # said before any model is fetched or loaded
    code, _, err = run_cli(capsys, "segment", str(src), "--classes", "tree; road", "-o", str(out), "--no-polygons",
                           "--overwrite", *_model_args(checkpoint))
    assert code == 0, err
    assert json.loads((out / "tile_summary.json").read_text())["prompts"] == "tree; road"
    assert not (out / "tile_polygons.gpkg").exists()  # no old polygons beside the new class map


def test_nodata_value_on_the_command_line_blanks_an_undeclared_border(tmp_path, capsys, checkpoint):
    data = scene(128, 128)[0]
    data[:, :, :16] = 0  # a black border the file does not declare
    src = write_raster(tmp_path / "framed.tif", data)
    code, _, err = run_cli(capsys, "segment", str(src), "--classes", "water; grass", "-o", str(tmp_path / "a"),
                           "--gsd", "0.5", *_model_args(checkpoint))
    assert code == 0 and "warning:" in err and "--nodata 0" in err  # the engine says what it noticed
    code, _, err = run_cli(capsys, "segment", str(src), "--classes", "water; grass", "-o", str(tmp_path / "b"),
                           "--gsd", "0.5", "--nodata", "0", *_model_args(checkpoint))
    assert code == 0, err
    with rasterio.open(tmp_path / "b" / "framed_classes.tif") as classes:
        labels = classes.read(1)
        assert (labels[:, :16] == classes.nodata).all() and (labels[:, 16:] != classes.nodata).all()


def test_no_command_replaces_its_input(tmp_path, capsys, checkpoint):
    """An output named like the input itself (`site_classes.tif` segmented again under --name site, into its
    own folder; `a_classes.tif` beside `a.tif` in a batch) is refused in one line, --overwrite or not: the
    input is never destroyed."""
    folder = tmp_path / "maps"
    folder.mkdir()
    site = write_raster(folder / "site_classes.tif", scene(64, 64)[0])
    before = site.read_bytes()
    for extra in ([], ["--overwrite"]):
        code, _, err = run_cli(capsys, "segment", str(site), "--classes", "a; b", "--name", "site", "-o", str(folder),
                               *extra, *_model_args(checkpoint))
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert f"would replace the input raster {site}" in err
    heatmap = write_raster(folder / "v_heatmap.tif", scene(64, 64)[0])  # search's own output name
    code, _, err = run_cli(capsys, "search", str(heatmap), "--query", "a pond", "--name", "v", "-o", str(folder),
                           "--overwrite", *_model_args(checkpoint))
    assert code == 2 and f"would replace the input raster {heatmap}" in err, err
    a = write_raster(folder / "a.tif", scene(64, 64)[0])
    a_classes = write_raster(folder / "a_classes.tif", scene(64, 64, seed=2)[0])
    kept = a_classes.read_bytes()
    code, _, err = run_cli(capsys, "segment-batch", str(a), str(a_classes), "--classes", "a; b", "-o", str(folder),
                           *_model_args(checkpoint))
    assert code == 2 and f"would replace the input raster {a_classes}" in err, err
    assert site.read_bytes() == before and a_classes.read_bytes() == kept


def test_a_name_too_long_or_a_fractional_window_is_one_line(tmp_path, capsys, checkpoint):
    long_input = write_raster(tmp_path / f"{'x' * 245}.tif", scene(32, 32)[0])  # a legal name, its outputs' are not
    for args in ([str(long_input)], [str(long_input).replace("x" * 245, "y"), "--name", "n" * 250]):
        if not Path(args[0]).exists():
            write_raster(Path(args[0]), scene(32, 32)[0])
        code, _, err = run_cli(capsys, "segment", *args, "--classes", "a; b", "-o", str(tmp_path / "o"),
                               *_model_args(checkpoint))
        assert code == 2 and len(err.strip().splitlines()) == 1 and "bytes long" in err and "--name" in err, err
    src = write_raster(tmp_path / "w.tif", scene(32, 32)[0])
    code, _, err = run_cli(capsys, "segment", str(src), "--classes", "a; b", "--window", "0.5,0.5,10.9,10.9",
                           "-o", str(tmp_path / "o"), *_model_args(checkpoint))
    assert code == 2 and "--window takes whole pixels" in err, err


def test_the_class_table_stays_in_columns_with_names_in_any_script(tmp_path, capsys, checkpoint):
    """A CJK character takes two terminal columns and a combining accent none: counting characters put
    the pixel counts of 建筑 two columns off."""
    import unicodedata

    src = write_raster(tmp_path / "in.tif", scene(120, 120)[0])
    assert main(["segment", str(src), "--classes", "water; 建筑; cafe\u0301 terrace", "-o", str(tmp_path / "out"),
                 "--model", str(checkpoint), "--arch", TINY]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.rstrip().endswith(" px") or " px " in line]

    def columns(text: str) -> int:
        return sum(0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) in "WF" else 1
                   for ch in text)

    assert len(rows) == 3, rows
    assert len({columns(row[:row.index(" px")]) for row in rows}) == 1, rows
