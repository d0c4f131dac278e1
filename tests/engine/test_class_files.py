"""Class files (`--classes @file`) follow the README's separators, like every other way of giving
classes: ';' and new lines separate classes, ',' separates synonyms, '#' starts a comment line."""

from __future__ import annotations

import json

import pytest
import rasterio
import torch

from engine.cli import main
from engine.dense.prompts import PromptSet
from tests.engine.conftest import TINY, make_clip
from tests.engine.rasters import scene, write_raster


@pytest.mark.parametrize("text", ["building; road; tree\n", "building\nroad\ntree\n",
                                  "# land cover\nbuilding;\n road ; tree\n\n"])
def test_a_class_file_line_with_semicolons_is_several_classes(tmp_path, text):
    path = tmp_path / "classes.txt"
    path.write_text(text, encoding="utf-8")
    assert PromptSet.from_file(path).labels == ["building", "road", "tree"]
    assert PromptSet.from_file(path) == PromptSet.parse(text.replace("# land cover", ""))


def test_synonyms_and_lists_use_the_same_parser():
    given = PromptSet.parse(["building, roof; road", "tree,forest"])  # the API's / plugin's list form
    assert [c.names for c in given.classes] == [("building", "roof"), ("road",), ("tree", "forest")]
    assert given == PromptSet.parse("building,roof\nroad; tree , forest")


def test_segment_with_a_class_file_gives_one_class_per_name(tmp_path, capsys):
    checkpoint = tmp_path / "tiny.pt"
    torch.save({"epoch": 1, "name": "tiny", "state_dict": make_clip().state_dict()}, checkpoint)
    src = write_raster(tmp_path / "tile.tif", scene(96, 128)[0])
    classes = tmp_path / "classes.txt"
    classes.write_text("building, roof; road; tree\n", encoding="utf-8")
    assert main(["segment", str(src), "--classes", f"@{classes}", "-o", str(tmp_path / "out"),
                 "--model", str(checkpoint), "--arch", TINY, "-q"]) == 0
    with rasterio.open(tmp_path / "out" / "tile_classes.tif") as ds:
        listed = json.loads(ds.tags()["FARSLIP_CLASSES"])
    assert [(c["name"], c["synonyms"]) for c in listed] == [("building", ["building", "roof"]),
                                                          ("road", ["road"]), ("tree", ["tree"])]


def test_a_background_class_beyond_the_limit_says_it_was_added(tmp_path, capsys):
    classes = "; ".join(f"class {k}" for k in range(254))
    src = write_raster(tmp_path / "in.tif", scene(32, 32)[0])
    code = main(["segment", str(src), "--classes", classes, "--background", "other", "--threshold", "0.5",
                 "-o", str(tmp_path / "out"), "--model", "unused.pt", "-q"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1
    assert "254 classes and the background class 'other' make 255; at most 254" in lines[0]
    assert PromptSet.parse(classes).with_background("class 3")[1] == 3  # a class of that name is the background
