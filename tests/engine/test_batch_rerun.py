"""`segment-batch` reruns: other classes or options recompute and say they replace the outputs;
"done earlier" only for identical settings; one output name never mixes two runs' products."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import rasterio
import torch

from engine.cli import main
from tests.engine.conftest import TINY, make_clip
from tests.engine.rasters import scene, write_raster


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("rerun")
    checkpoint = root / "tiny.pt"
    torch.save({"epoch": 1, "name": "tiny", "state_dict": make_clip().state_dict()}, checkpoint)
    raster = write_raster(root / "tile.tif", scene(120, 150, seed=1)[0])
    return checkpoint, raster


def _batch(inputs, out, classes, *extra):
    checkpoint, raster = inputs
    return main(["segment-batch", str(raster), "--classes", classes, "-o", str(out), "--block", "256",
                 "--model", str(checkpoint), "--arch", TINY, "-q", *extra])


def _state(out):
    summary = json.loads((out / "batch_summary.json").read_text())
    with rasterio.open(out / "tile_classes.tif") as ds:
        names = [c["name"] for c in json.loads(ds.tags()["FARSLIP_CLASSES"])]
    return summary, names


def test_a_rerun_with_other_settings_recomputes_and_says_it_replaces(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    assert _batch(inputs, out, "water; grass") == 0
    assert _state(out)[1] == ["water", "grass"]

    capsys.readouterr()
    assert _batch(inputs, out, "building; road; tree") == 0  # other classes: a new result
    summary, names = _state(out)
    assert names == ["building", "road", "tree"]
    assert summary["done"] == 1 and summary["replaced"] == 1 and summary["done_earlier"] == 0
    assert summary["windows"]["computed"] > 0
    assert "replaced the earlier outputs" in capsys.readouterr().err
    tile = json.loads((out / "tile_summary.json").read_text())
    assert tile["prompts"] == "building; road; tree"

    assert _batch(inputs, out, "building; road; tree") == 0  # identical settings: nothing to do
    summary, _ = _state(out)
    assert summary["done_earlier"] == 1 and summary["windows"]["computed"] == 0

    assert _batch(inputs, out, "water; grass") == 0  # back to the first settings: their old state is stale
    summary, names = _state(out)
    assert names == ["water", "grass"] and summary["replaced"] == 1 and summary["done_earlier"] == 0

    assert _batch(inputs, out, "water; grass", "--threshold", "0.9") == 0  # an option changes too
    assert _state(out)[0]["replaced"] == 1


def test_a_rerun_without_polygons_removes_the_earlier_polygons(inputs, tmp_path):
    out = tmp_path / "out"
    assert _batch(inputs, out, "water; grass", "--scores") == 0
    assert (out / "tile_polygons.gpkg").exists() and (out / "tile_scores.tif").exists()
    assert _batch(inputs, out, "water; grass", "--no-polygons") == 0
    assert not (out / "tile_polygons.gpkg").exists() and not (out / "tile_scores.tif").exists()
    assert (out / "tile_classes.tif").exists()
    # the run's merged polygons go too: what the folder holds is what batch_summary.json lists
    assert not (out / "merged_polygons.gpkg").exists()
    assert json.loads((out / "batch_summary.json").read_text())["merged"] == ["mosaic_classes.vrt"]


def test_a_rerun_over_fewer_crss_leaves_only_its_own_mosaics(inputs, tmp_path):
    checkpoint, raster = inputs
    other = write_raster(tmp_path / "web.tif", scene(100, 130, seed=2)[0], crs="EPSG:3857",
                         origin=(1490000.0, 6890000.0), res=0.5)
    out = tmp_path / "out"
    run = ["--classes", "water; grass", "-o", str(out), "--block", "256", "--model", str(checkpoint), "--arch", TINY, "-q"]
    assert main(["segment-batch", str(raster), str(other), *run]) == 0
    two = sorted(p.name for p in out.glob("mosaic_classes*.vrt"))
    assert len(two) == 2 and "mosaic_classes.vrt" not in two  # one mosaic per CRS
    assert main(["segment-batch", str(raster), *run]) == 0
    assert sorted(p.name for p in out.glob("mosaic_classes*.vrt")) == ["mosaic_classes.vrt"]
    assert sorted(json.loads((out / "batch_summary.json").read_text())["merged"]) == [
        "merged_polygons.gpkg", "mosaic_classes.vrt"]


def test_a_rerun_with_other_weights_at_the_same_path_or_a_changed_input_recomputes(inputs, tmp_path):
    checkpoint, raster = inputs
    model = tmp_path / "model.pt"
    tile = tmp_path / "tile.tif"
    torch.save(torch.load(checkpoint, weights_only=True), model)
    tile.write_bytes(raster.read_bytes())
    out = tmp_path / "out"

    def run():
        assert main(["segment-batch", str(tile), "--classes", "water; grass; building", "-o", str(out), "--block",
                     "256", "--model", str(model), "--arch", TINY, "-q"]) == 0
        summary = json.loads((out / "batch_summary.json").read_text())
        with rasterio.open(out / "tile_classes.tif") as ds:
            return summary, ds.read(1)

    first, classes = run()
    assert first["done"] == 1
    assert run()[0]["done_earlier"] == 1  # nothing changed: nothing to do
    torch.save({"epoch": 1, "name": "tiny", "state_dict": make_clip(seed=7).state_dict()}, model)  # retrained
    again, other = run()
    assert again["done_earlier"] == 0 and again["windows"]["computed"] > 0
    assert (other != classes).any()  # the new weights' classes, not the old ones kept
    write_raster(tile, scene(120, 150, seed=5)[0])  # the input replaced by other pixels
    changed, _ = run()
    assert changed["done_earlier"] == 0 and changed["replaced"] == 1 and changed["windows"]["computed"] > 0
    assert run()[0]["done_earlier"] == 1


def test_inputs_named_like_the_batch_files_keep_their_own_outputs(inputs, tmp_path):
    checkpoint, raster = inputs
    for name in ("batch", "merged", "mosaic"):
        (tmp_path / f"{name}.tif").write_bytes(raster.read_bytes())
    out = tmp_path / "out"
    args = ["segment-batch", *(str(tmp_path / f"{n}.tif") for n in ("batch", "merged", "mosaic")), "--classes",
            "water; grass", "-o", str(out), "--block", "256", "--model", str(checkpoint), "--arch", TINY, "-q"]
    assert main(args) == 0
    summary = json.loads((out / "batch_summary.json").read_text())
    assert summary["done"] == 3
    names = [entry["name"] for entry in summary["per_input"]]
    assert all(n not in ("batch", "merged", "mosaic") for n in names) and len(set(names)) == 3
    for n in names:
        per_input = json.loads((out / f"{n}_summary.json").read_text())
        assert [c["name"] for c in per_input["classes"]] == ["water", "grass"]
    assert main(args) == 0  # and a rerun finds them done
    assert json.loads((out / "batch_summary.json").read_text())["done_earlier"] == 3


def test_a_deleted_output_is_made_again_and_names_follow_the_file_not_its_spelling(inputs, tmp_path, monkeypatch):
    checkpoint, raster = inputs
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "tile.tif").write_bytes(raster.read_bytes())
    out = tmp_path / "out"

    def run(*paths):
        assert main(["segment-batch", *paths, "--classes", "water; grass", "-o", str(out), "--block", "256",
                     "--model", str(checkpoint), "--arch", TINY, "-q"]) == 0
        return json.loads((out / "batch_summary.json").read_text())

    first = run(str(tmp_path / "a" / "tile.tif"), str(tmp_path / "b" / "tile.tif"))
    names = sorted(entry["name"] for entry in first["per_input"])
    monkeypatch.chdir(tmp_path)  # the same command from another folder, with relative paths
    again = run("a/tile.tif", "b/tile.tif")
    assert sorted(entry["name"] for entry in again["per_input"]) == names and again["done_earlier"] == 2
    (out / f"{names[0]}_classes.tif").unlink()  # a user deletes one output
    made = run("a/tile.tif", "b/tile.tif")
    assert made["done"] == 1 and made["done_earlier"] == 1 and (out / f"{names[0]}_classes.tif").exists()
    os.link(tmp_path / "a" / "tile.tif", tmp_path / "hard.tif")  # a hard link is the same file: run once
    assert [entry["input"] for entry in run("a/tile.tif", "hard.tif")["per_input"]] == ["a/tile.tif"]


def test_inputs_in_a_crs_without_a_code_and_without_a_crs_are_merged(inputs, tmp_path):
    checkpoint, raster = inputs
    with rasterio.open(raster) as ds:
        data, profile = ds.read(), ds.profile
    local = profile | {"crs": rasterio.crs.CRS.from_proj4("+proj=tmerc +lon_0=15.5 +k=0.9999 +x_0=500000 "
                                                         "+ellps=GRS80 +units=m +no_defs")}
    with rasterio.open(tmp_path / "local.tif", "w", **local) as ds:
        ds.write(data)
    bare = {k: v for k, v in profile.items() if k not in ("crs", "transform")}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(tmp_path / "bare.tif", "w", **bare) as ds:
            ds.write(data)
    out = tmp_path / "out"
    assert main(["segment-batch", str(raster), str(tmp_path / "local.tif"), str(tmp_path / "bare.tif"), "--classes",
                 "water; grass", "-o", str(out), "--block", "256", "--model", str(checkpoint), "--arch", TINY,
                 "-q"]) == 0
    mosaics = sorted(p.name for p in out.glob("mosaic_classes*.vrt"))
    assert len(mosaics) == 2 and "mosaic_classes_EPSG_32633.vrt" in mosaics
    assert any(re.fullmatch(r"mosaic_classes_CRS_[0-9a-f]{8}\.vrt", name) for name in mosaics)
    import pyogrio

    layers = sorted(name for name, _ in pyogrio.list_layers(out / "merged_polygons.gpkg"))
    assert "polygons_pixel_space" in layers and "polygons_EPSG_32633" in layers and len(layers) == 3
    from pyogrio.raw import read

    meta, _, _, columns = read(out / "merged_polygons.gpkg", layer="polygons_pixel_space")
    assert set(columns[list(meta["fields"]).index("source")]) == {"bare"}  # each input's polygons, tagged


def _run(inputs, out, *rasters, classes="water; grass"):
    checkpoint, _ = inputs
    return main(["segment-batch", *map(str, rasters), "--classes", classes, "-o", str(out), "--block", "256",
                 "--model", str(checkpoint), "--arch", TINY, "-q"])


def test_another_folders_file_of_the_same_name_keeps_the_earlier_outputs(inputs, tmp_path):
    """x/tile.tif, then y/tile.tif into the same folder: y was 'done earlier' (x's outputs, when the files
    had the same size and time, as tar and cp -p leave them) or replaced x's outputs saying they were of
    'an earlier version of the file'. Now y gets its own names and x's outputs stay."""
    import os

    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    x = write_raster(tmp_path / "x" / "tile.tif", scene(120, 150, seed=11)[0])
    y = write_raster(tmp_path / "y" / "tile.tif", scene(120, 150, seed=12)[0], origin=(600000.0, 5100000.0))
    os.utime(y, ns=(x.stat().st_atime_ns, x.stat().st_mtime_ns))
    out = tmp_path / "out"
    assert _run(inputs, out, x) == 0 and _run(inputs, out, y) == 0
    first, second = (json.loads(p.read_text()) for p in (out / "tile_summary.json", out / "batch_summary.json"))
    assert first["input"] == str(x)  # x's outputs are still x's
    mine = second["per_input"][0]
    assert mine["status"] == "done" and mine["name"].startswith("tile_") and mine["name"] != "tile"
    assert json.loads((out / f"{mine['name']}_summary.json").read_text())["input"] == str(y)
    assert _run(inputs, out, x) == 0  # x again: done earlier, under its own name
    assert json.loads((out / "batch_summary.json").read_text())["done_earlier"] == 1


def test_what_is_in_the_output_folder_that_no_run_made_is_not_written_over(inputs, tmp_path, capsys):
    """A file of the user's own with an output's name was replaced without a word; a folder there, or a
    file where the batch keeps its state, ended in a traceback."""
    _, raster = inputs
    for name, make in [("tile_classes.tif", lambda p: p.write_text("mine")),
                       ("merged_polygons.gpkg", lambda p: p.mkdir()), (".farslip-batch", lambda p: p.write_text("x"))]:
        out = tmp_path / name.strip(".").replace(".", "_")
        out.mkdir()
        make(out / name)
        capsys.readouterr()
        assert main(["segment-batch", str(raster), "--classes", "water", "-o", str(out), "--model", str(inputs[0]),
                     "--arch", TINY, "-q"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("farslip: error: "), err
        line = err[0]
        assert str(out / name) in line, line
        assert {"tile_classes.tif": "no FarSLIP run of", "merged_polygons.gpkg": "is a folder, where the run writes",
                ".farslip-batch": "is a file: a batch run keeps"}[name] in line, line
    assert (tmp_path / "tile_classes_tif" / "tile_classes.tif").read_text() == "mine"


def _interrupted(inputs, raster, out, after: int = 1) -> Path:
    """A run of `raster` into `out` interrupted (Ctrl-C) once `after` blocks are saved; its state folder."""
    from engine.batch.local import LocalExecutor
    from engine.batch.run import BatchSettings, run_batch
    from engine.dense import Segmenter
    from engine.models import load_model

    segmenter = Segmenter(load_model(str(inputs[0]), arch=TINY, device="cpu"), "water; grass")
    saved = []

    def progress(done: int, total: int) -> None:
        if done:
            saved.append(done)
            if len(saved) >= after:
                raise KeyboardInterrupt

    executor = LocalExecutor(segmenter)
    with pytest.raises(KeyboardInterrupt):
        run_batch([str(raster)], BatchSettings(out_dir=str(out), block=256), segmenter, executor, progress=progress)
    executor.close()
    return next(p for p in (out / ".farslip-batch").iterdir() if p.name != "outputs")


@pytest.mark.parametrize("spoil", [
    lambda state: (state / "manifest.jsonl").open("a").write('{}\nnull\n[1, 2]\n{"input": "big", "windows": 3}\n'
                                                             '{"input": "big", "block": [0, 0], "windows": "9"}\n'),
    lambda state: (state / "manifest.jsonl").open("ab").write(b"\xff\xfe not text\n"),
    lambda state: next((state / "parts" / "big").glob("*.npz")).write_bytes(b""),
    lambda state: next((state / "parts" / "big").glob("*.npz")).write_bytes(b"garbage\n"),
    lambda state: (state.parent / "outputs" / "big").mkdir(parents=True),
], ids=["odd-lines", "not-utf8", "empty-block", "garbage-block", "record-is-a-folder"])
def test_a_resumed_run_skips_what_a_crash_or_a_hand_spoiled(inputs, tmp_path, spoil):
    """Each was a traceback on every rerun, nothing published. A block that does not read back is computed
    again: the result is the one an uninterrupted run makes."""
    raster = write_raster(tmp_path / "big.tif", scene(300, 560, seed=5)[0])
    whole, out = tmp_path / "whole", tmp_path / "out"
    assert _run(inputs, whole, raster) == 0
    state = _interrupted(inputs, raster, out)
    assert list((state / "parts" / "big").glob("*.npz"))  # (a saved block, nothing published)
    spoil(state)
    assert _run(inputs, out, raster) == 0
    summary = json.loads((out / "batch_summary.json").read_text())
    assert summary["done"] == 1 and summary["failed"] == 0
    with rasterio.open(whole / "big_classes.tif") as a, rasterio.open(out / "big_classes.tif") as b:
        assert (a.read() == b.read()).all()
