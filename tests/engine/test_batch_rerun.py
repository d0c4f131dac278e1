"""`segment-batch` reruns: other classes or options recompute and say they replace the outputs;
"done earlier" only for identical settings; one output name never mixes two runs' products."""

from __future__ import annotations

import json
import re

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
