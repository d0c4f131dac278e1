"""`farslip segment-batch` as a user runs it: outputs equal `segment`'s, merged products, Ray with a
killed worker, resume after Ctrl-C, bad inputs reported while the rest is processed."""

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
import psutil
import pyogrio
import pyogrio.raw
import pytest
import rasterio
import torch
from rasterio.crs import CRS

from engine.batch.inputs import expand_inputs
from engine.errors import InputError
from engine.cli import main
from tests.engine.conftest import TINY, make_clip
from tests.engine.rasters import scene, write_raster

ROOT = Path(__file__).resolve().parents[2]
CLASSES = "water,river; grass; building,roof; road"
BLOCK = "256"
# name: (height, width, crs, origin, resolution); `big` spans 3 × 4 blocks of 256 px
RASTERS = {
    "small_a": (200, 260, "EPSG:32633", (500000.0, 5200000.0), 0.5),
    "small_b": (230, 250, "EPSG:32633", (500300.0, 5200000.0), 0.3),  # another resolution (resampled to 0.5 m)
    "small_c": (210, 240, "EPSG:3857", (1490000.0, 6890000.0), 0.5),
    "big": (700, 900, "EPSG:32633", (500000.0, 5199800.0), 0.5),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Input rasters, a tiny checkpoint and `segment`'s outputs for every input (the reference)."""
    root = tmp_path_factory.mktemp("batch")
    checkpoint = root / "tiny.pt"
    torch.save({"epoch": 1, "name": "tiny", "state_dict": make_clip().state_dict()}, checkpoint)
    paths = {}
    for k, (name, (h, w, crs, origin, res)) in enumerate(RASTERS.items()):
        paths[name] = write_raster(root / f"{name}.tif", scene(h, w, seed=k)[0], crs=crs, origin=origin, res=res)
    for name, path in paths.items():
        assert main(["segment", str(path), "--classes", CLASSES, "-o", str(root / "ref"), "--block", BLOCK,
                     *_model_args(checkpoint)]) == 0
    return {"root": root, "checkpoint": checkpoint, "paths": paths, "ref": root / "ref"}


def _model_args(checkpoint):
    return ["--model", str(checkpoint), "--arch", TINY, "-q"]


def _batch(data, out, *extra, inputs=None):
    inputs = inputs or [str(p) for p in data["paths"].values()]
    return main(["segment-batch", *inputs, "--classes", CLASSES, "-o", str(out), "--block", BLOCK,
                 *_model_args(data["checkpoint"]), *extra])


def _classes(path):
    with rasterio.open(path) as ds:
        return ds.read(1), ds.crs, ds.transform


def _assert_equal_to_segment(data, out, names=None):
    for name in names or data["paths"]:
        got, crs, transform = _classes(out / f"{name}_classes.tif")
        want, want_crs, want_transform = _classes(data["ref"] / f"{name}_classes.tif")
        assert crs == want_crs and transform == want_transform
        assert np.array_equal(got, want), f"{name}: class map differs from `segment`'s: {_difference(got, want)}"
        for product in ("summary.json", "polygons.gpkg"):
            assert (out / f"{name}_{product}").exists()


def _difference(got: np.ndarray, want: np.ndarray) -> str:
    """Where and how two class maps differ (a rare difference seen once in CI says more than `False`)."""
    rows, cols = np.nonzero(got != want)
    return (f"{rows.size} pixels in rows {rows.min()}-{rows.max()}, columns {cols.min()}-{cols.max()} of "
            f"{got.shape}; pixels per class {np.bincount(got.ravel()).tolist()} (want "
            f"{np.bincount(want.ravel()).tolist()})")


def _summary(out):
    return json.loads((out / "batch_summary.json").read_text())


def test_in_process_batch_equals_segment_with_merged_products(data, tmp_path, monkeypatch):
    monkeypatch.setattr("engine.batch.merge.MERGE_CHUNK", 7)  # inputs merged a few features at a time
    out = tmp_path / "out"
    assert _batch(data, out) == 0
    _assert_equal_to_segment(data, out)
    summary = _summary(out)
    assert summary["done"] == 4 and summary["failed"] == 0
    assert summary["windows"]["computed"] == sum(
        json.loads((data["ref"] / f"{n}_summary.json").read_text())["crops"] for n in data["paths"])
    for cls, area in summary["area_m2_per_class"].items():  # areas per class add up over the inputs
        per_input = [json.loads((data["ref"] / f"{n}_summary.json").read_text()) for n in data["paths"]]
        assert area == pytest.approx(sum(c["area_m2"] for s in per_input for c in s["classes"] if c["name"] == cls))

    # one GeoPackage layer per CRS holding every input's polygons, in that input's CRS
    layers = dict(pyogrio.list_layers(out / "merged_polygons.gpkg"))
    for name, (*_, crs, _origin, _res) in RASTERS.items():
        layer = f"polygons_{crs.replace(':', '_')}"
        assert layer in layers
        info = pyogrio.read_info(out / "merged_polygons.gpkg", layer=layer)
        assert CRS.from_user_input(info["crs"]) == CRS.from_user_input(crs)
        sources = _read_field(out / "merged_polygons.gpkg", layer, "source")
        expected = pyogrio.read_info(out / f"{name}_polygons.gpkg")["features"]
        assert int((np.asarray(sources) == name).sum()) == expected > 0

    # one VRT per CRS that GDAL opens; at each input's pixel centres it shows that input's classes
    for crs in {r[2] for r in RASTERS.values()}:
        vrt = out / f"mosaic_classes_{crs.replace(':', '_')}.vrt"
        with rasterio.open(vrt) as mosaic:
            assert mosaic.crs == CRS.from_user_input(crs)
            for name, (h, w, c, _, _) in RASTERS.items():
                if c != crs:
                    continue
                labels, _, transform = _classes(out / f"{name}_classes.tif")
                rng = np.random.default_rng(0)
                rows, cols = rng.integers(0, h, 50), rng.integers(0, w, 50)
                points = [transform @ (col + 0.5, row + 0.5) for row, col in zip(rows, cols)]
                assert [int(v[0]) for v in mosaic.sample(points)] == labels[rows, cols].tolist()


def _read_field(path, layer, field):
    meta, _, _, columns = pyogrio.raw.read(str(path), layer=layer, read_geometry=False)
    return columns[list(meta["fields"]).index(field)]


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_batch_equals_segment(data, tmp_path, local_ray, capfd):
    out = tmp_path / "out"
    capfd.readouterr()
    assert _batch(data, out, "--ray", "auto", "--workers", "2") == 0
    err = capfd.readouterr().err  # Ray's own C++ log lines reach the terminal's stderr directly
    assert "core_worker" not in err and "constructor arguments" not in err, err
    _assert_equal_to_segment(data, out)
    summary = _summary(out)
    assert summary["workers"] == 2 and "Ray" in summary["executor"] and summary["done"] == 4


def test_ray_run_survives_killed_model_and_reader_actors(data, tmp_path, local_ray):
    out = tmp_path / "out"
    codes = []
    run = threading.Thread(target=lambda: codes.append(
        _batch(data, out, "--ray", "auto", "--workers", "2", inputs=[str(data["paths"]["big"])])))
    run.start()
    manifest = _wait_for_blocks(out, 1, run, poll=0.002)
    actors = _actor_processes("BlockWorker", "BlockReader")
    for process in actors:  # paused: no block finishes between counting them and the kills
        process.suspend()
    try:
        killed_after = len(manifest.read_text().splitlines())
        names = local_ray.util.list_named_actors()
        workers = [n for n in names if "-worker-" in n]
        readers = [n for n in names if "-reader-" in n]
        assert workers and readers
        local_ray.kill(local_ray.get_actor(workers[0]), no_restart=False)
        local_ray.kill(local_ray.get_actor(readers[-1]), no_restart=False)
    finally:
        for process in actors:
            try:
                process.resume()
            except psutil.NoSuchProcess:
                pass
    run.join(timeout=300)
    assert codes == [0]
    assert killed_after < _summary(out)["windows"]["to_compute"]
    _assert_equal_to_segment(data, out, ["big"])


def _actor_processes(*classes: str) -> list[psutil.Process]:
    """This test process's Ray actor processes of `classes` (Ray titles them `ray::Class…`)."""
    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            title = " ".join(process.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if title.startswith(tuple(f"ray::{c}" for c in classes)):
            found.append(process)
    assert found, "no Ray actor processes found"
    return found


def test_ray_workers_need_no_checkpoint_file(data, tmp_path, local_ray):
    """The weights travel from the driver through the object store: worker nodes need no copy of the file."""
    from engine.batch.ray_backend import RayExecutor
    from engine.batch.run import BatchSettings, run_batch
    from engine.dense import Segmenter
    from engine.models import load_model

    private = tmp_path / "only-on-the-driver.pt"
    private.write_bytes(data["checkpoint"].read_bytes())
    segmenter = Segmenter(load_model(str(private), arch=TINY, device="cpu"), CLASSES)
    private.unlink()
    out = tmp_path / "out"
    executor = RayExecutor("auto", segmenter, 2, device="cpu")
    try:
        summary = run_batch([str(data["paths"]["small_a"])], BatchSettings(str(out), block=int(BLOCK)), segmenter,
                            executor)
    finally:
        executor.close()
    assert summary["done"] == 1, summary["failures"]
    _assert_equal_to_segment(data, out, ["small_a"])


def test_reader_actors_do_not_import_torch(local_ray):
    """Readers start in a fraction of a second: the unit and reading modules stay free of torch."""
    from engine.batch.ray_backend import BlockReader

    reader = local_ray.remote(BlockReader).options(num_cpus=0).remote()
    try:
        loaded = local_ray.get(reader.__ray_call__.remote(
            lambda self: [m for m in ("torch", "open_clip", "engine.dense", "rasterio") if m in sys.modules]))
    finally:
        local_ray.kill(reader)
    assert loaded == ["rasterio"]


def test_more_workers_than_the_cluster_holds_is_one_line(data, tmp_path, local_ray, capsys):
    started = time.monotonic()
    assert _batch(data, tmp_path / "out", "--ray", "auto", "--workers", "3",
                  inputs=[str(data["paths"]["small_a"])]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "no room for 3 worker(s)" in lines[0] and time.monotonic() - started < 60, lines
    assert not local_ray.util.list_named_actors()  # nothing left running on the cluster


def _wait_for_blocks(out: Path, n: int, run=None, timeout: float = 300, poll: float = 0.05) -> Path:
    """The manifest, once it records at least `n` finished blocks (a generous bound: on a loaded 2-core
    CI machine starting Ray and its actors alone took over two minutes)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = list(out.glob(".farslip-batch/*/manifest.jsonl"))
        if found and len(found[0].read_text().splitlines()) >= n:
            return found[0]
        if run is not None and not run.is_alive():
            break
        time.sleep(poll)
    raise AssertionError(f"no {n} finished blocks in {out}")


def _interrupted_while_computing(command: list[str], out: Path, blocks: int, attempts: int = 3) -> str:
    """Start a batch run and press Ctrl-C while it is computing; its stderr. Once the manifest records
    2 finished blocks the process is paused (SIGSTOP: the manifest cannot change), and interrupted if
    blocks remain; a fast machine can finish them all within one poll, and then a fresh run is tried."""
    for _ in range(attempts):
        shutil.rmtree(out, ignore_errors=True)
        proc = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "HF_HUB_OFFLINE": "1"})
        manifest = _wait_for_blocks(out, 2, poll=0.002)
        proc.send_signal(signal.SIGSTOP)
        caught = len(manifest.read_text().splitlines()) < blocks
        if caught:
            proc.send_signal(signal.SIGINT)  # delivered as the process goes on
        proc.send_signal(signal.SIGCONT)
        _, err = proc.communicate(timeout=120)
        if caught:
            assert proc.returncode == 130, err
            return err
    raise AssertionError(f"the run finished all {blocks} blocks before it could be interrupted, {attempts} times")


@pytest.mark.parametrize("executor", [[], ["--ray", "local", "--workers", "2"]], ids=["in-process", "ray"])
def test_ctrl_c_then_rerun_does_only_the_missing_windows(data, tmp_path, executor):
    out = tmp_path / "out"
    big = str(data["paths"]["big"])
    err = _interrupted_while_computing([sys.executable, "-m", "engine.cli", "segment-batch", big, "--classes", CLASSES,
                                        "-o", str(out), "--block", BLOCK, *_model_args(data["checkpoint"]), *executor],
                                       out, blocks=3 * 4)
    assert "rerun the same command to resume" in err.strip().splitlines()[-1]
    assert not (out / "big_classes.tif").exists()  # nothing carries a final name before it is complete
    assert not any(p.name.endswith((".tif", ".gpkg", ".vrt")) for p in out.iterdir())

    assert _batch(data, out, inputs=[big]) == 0
    windows = _summary(out)["windows"]
    reference = json.loads((data["ref"] / "big_summary.json").read_text())["crops"]
    assert windows["resumed"] > 0 and windows["computed"] > 0
    assert windows["computed"] + windows["resumed"] == reference  # each window computed once over both runs
    _assert_equal_to_segment(data, out, ["big"])

    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("big_*")}
    assert _batch(data, out, inputs=[big]) == 0  # a finished run is not redone and its outputs not rewritten
    assert _summary(out)["done_earlier"] == 1 and _summary(out)["windows"]["computed"] == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("big_*")} == stamps


def test_bad_inputs_are_reported_and_the_rest_processed(data, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.tif"
    write_raster(corrupt, scene(300, 300, seed=7)[0])
    corrupt.write_bytes(corrupt.read_bytes()[: corrupt.stat().st_size // 2])
    text = tmp_path / "notes.tif"
    text.write_text("this is not a raster")
    good = str(data["paths"]["small_a"])
    out = tmp_path / "out"
    inputs = [good, str(tmp_path / "missing.tif"), str(corrupt), str(text)]
    code = _batch(data, out, inputs=inputs)
    err = capsys.readouterr().err
    assert code != 0
    summary = _summary(out)
    assert summary["done"] == 1 and summary["failed"] == 3
    assert {f["input"] for f in summary["failures"]} == set(inputs[1:])
    for bad in inputs[1:]:
        assert any(line.startswith("farslip: failed: ") and bad in line for line in err.splitlines())
    _assert_equal_to_segment(data, out, ["small_a"])
    assert "Traceback" not in err


def test_ray_asked_for_without_ray_is_one_line(data, tmp_path):
    code = ("import sys; sys.modules['ray'] = None; from engine.cli import main; "
            f"sys.exit(main({['segment-batch', str(data['paths']['small_a']), '--classes', 'a', '-o', str(tmp_path), '--ray', 'local']!r}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        "farslip: error: --ray needs Ray in this Python environment: "
        "pip install 'ray[data]>=2.40' (from a clone: pip install -e '.[ray]')"]


def test_inputs_from_globs_and_lists(tmp_path):
    for name in ("b.tif", "a.tif", "c.png"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    listing = tmp_path / "sub" / "list.txt"
    listing.write_text(f"# tiles\n../a.tif\n\n{tmp_path / 'b.tif'}\n/vsis3/bucket/tile.tif\n")
    assert expand_inputs([str(tmp_path / "*.tif")]) == [str(tmp_path / "a.tif"), str(tmp_path / "b.tif")]
    assert expand_inputs([str(listing)]) == [str(tmp_path / "sub" / "../a.tif"), str(tmp_path / "b.tif"),
                                             "/vsis3/bucket/tile.tif"]
    # one file however it is spelled (relative, with `..`, through a link): processed once, not thrice
    (tmp_path / "link.tif").symlink_to(tmp_path / "a.tif")
    spellings = [str(tmp_path / "a.tif"), str(tmp_path / "sub" / ".." / "a.tif"), str(tmp_path / "link.tif"),
                 os.path.relpath(tmp_path / "a.tif")]
    assert expand_inputs(spellings) == [str(tmp_path / "a.tif")]
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing yet\n")
    with pytest.raises(InputError, match="no rasters to process"):
        expand_inputs([str(empty)])
    notepad = tmp_path / "notepad.txt"
    notepad.write_bytes("\ufeffa.tif\r\n".encode("utf-8"))  # a list saved by Windows Notepad
    assert expand_inputs([str(notepad)]) == [str(tmp_path / "a.tif")]
    globs = tmp_path / "sub" / "globs.txt"
    globs.write_text("../*.tif\n../none*.tif\n")  # a glob in a list, as on the command line
    assert expand_inputs([str(globs)]) == [str(tmp_path / "sub" / "../a.tif"), str(tmp_path / "sub" / "../b.tif"),
                                           str(tmp_path / "sub" / "../none*.tif")]  # (matching nothing: fails alone)


def test_an_unreachable_ray_address_is_one_line_within_seconds(data, tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "engine.cli", "segment-batch", str(data["paths"]["small_a"]),
                           "--classes", "a", "-o", str(tmp_path), "--ray", f"127.0.0.1:{port}",
                           *_model_args(data["checkpoint"])],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                          timeout=120)
    assert proc.returncode != 0 and time.monotonic() - started < 60
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot reach the Ray cluster at '127.0.0.1:{port}'" in lines[0], proc.stderr


def test_overlapping_inputs_are_said_to_count_twice(data, tmp_path, capsys):
    """Tiles cut with a margin overlap: the class areas add up each input's, and the summary says how much of
    the area is counted more than once (none said for tiles that only touch)."""
    rgb = scene(200, 200, seed=5)[0]
    west = write_raster(tmp_path / "west.tif", rgb[:, :, :120])  # 60 m wide from x 500000
    east = write_raster(tmp_path / "east.tif", rgb[:, :, 80:], origin=(500040.0, 5200000.0))  # from x 500040
    touching = write_raster(tmp_path / "touching.tif", rgb[:, :, 120:], origin=(500060.0, 5200000.0))
    capsys.readouterr()
    assert _batch(data, tmp_path / "o", inputs=[str(west), str(east)]) == 0
    # 60 m + 60 m of tiles over 100 m: 20 m × 100 m in both, 20 % of the area they cover
    assert _summary(tmp_path / "o")["notes"] == [
        "the inputs in EPSG:32633 overlap: 20.0% more area than they cover together is in several inputs, "
        "and the class areas count it once per input"]
    assert "farslip: note: the inputs in EPSG:32633 overlap: 20.0%" in capsys.readouterr().err
    assert _batch(data, tmp_path / "t", inputs=[str(west), str(touching)]) == 0
    assert _summary(tmp_path / "t")["notes"] == []
