"""Stage 2 on MGRS `text_info.json` files as the published data comes: the images in `global_imgs/`
beside the file (found, or asked for with one line naming the path tried), objects described by their
own caption without any category, malformed records refused in one line naming the record and the
field (exit status 2, before a model is loaded), and boxes clipped to the image before the area filter
and the crop, as the published reader does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.errors import InputError
from tests.engine.conftest import TINY
from training.data.readers import REGION_PROMPT, MGRSDataset
from training.train import main

REPO = Path(__file__).resolve().parents[2]


def _records(scene_dataset) -> list[dict]:
    return json.loads(Path(scene_dataset["mgrs"]).read_text())


def _images(scene_dataset) -> Path:
    return Path(scene_dataset["mgrs"]).parent / "images"


def _write(folder: Path, records: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "text_info.json"
    path.write_text(json.dumps(records))
    return path


def _train(args: list[str], out: Path, capsys) -> tuple[int, str, str]:
    code = main(["--stage", "2", *args, "--batch-size", "4", "--workers", "0", "--max-steps", "1",
                 "--device", "cpu", "--set", "min_box=8", "--set", "tensorboard=false", "-o", str(out)])
    printed = capsys.readouterr()
    return code, printed.out, printed.err


def _one_line(code: int, err: str, *needles: str) -> str:
    assert code == 2 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# --- where the images are -------------------------------------------------------------------------------

def test_images_in_global_imgs_beside_text_info_are_found_and_said(scene_dataset, tmp_path, capsys):
    """The published MGRS-200k layout: mgrs/text_info.json + mgrs/global_imgs/<global_filepath>."""
    mgrs = tmp_path / "mgrs"
    path = _write(mgrs, _records(scene_dataset))
    (mgrs / "global_imgs").mkdir()
    (mgrs / "global_imgs" / "images").symlink_to(_images(scene_dataset))
    code, out, err = _train(["--data", str(path), "--model", f"random:{TINY}"], tmp_path / "run", capsys)
    assert code == 0, err
    assert any("global_imgs" in line and "--data-root" in line for line in out.splitlines()), out
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert Path(config["data_root"]) == mgrs / "global_imgs"  # the folder used is recorded with the run


def test_category_ids_that_disagree_with_their_names_are_said_before_training(scene_dataset, tmp_path, capsys):
    """A text_info.json merged from datasets with their own numbering: one id for two categories (taught as
    one class), one category under two ids (pushed away from its own text), a category object with id −1
    (left out). The published code trains on them as they are; the run says so on stderr, once."""
    records = _records(scene_dataset)
    objects = [s for r in records for s in r.get("segment") or [] if "cap" not in s]
    assert len(objects) >= 4
    first, name = objects[0]["category_id"], objects[0]["category"]
    objects[1].update(category="quarry", category_id=first)  # one id, two categories
    objects[2].update(category=name.upper(), category_id=99)  # one category (however written), two ids
    objects[3].update(category_id=-1)
    path = _write(tmp_path / "merged", records)
    code, out, err = _train(["--data", str(path), "--data-root", str(_images(scene_dataset).parent),
                             "--model", f"random:{TINY}"], tmp_path / "run", capsys)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("data: warning: text_info.json: ")]
    assert any(f"category_id {first} names 2 categories" in w and "'quarry' ×1" in w for w in warnings), err
    assert any(f"category '{name.lower()}' has 2 ids ({first}, 99)" in w for w in warnings), err
    assert any("objects of a category with category_id -1: 1;" in w for w in warnings), err
    assert len(warnings) == 3, err


def test_images_elsewhere_fail_at_once_naming_the_path_and_data_root(scene_dataset, tmp_path, capsys):
    records = _records(scene_dataset)
    path = _write(tmp_path / "meta", records)
    (tmp_path / "pictures").mkdir()
    (tmp_path / "pictures" / "images").symlink_to(_images(scene_dataset))
    # a model that does not exist: the data are checked before any model is looked for
    code, _, err = _train(["--data", str(path), "--model", "no/such.pt"], tmp_path / "run", capsys)
    line = _one_line(code, err, "--data-root", str(tmp_path / "meta" / records[0]["global_filepath"]))
    assert "unknown model" not in line
    assert not (tmp_path / "run" / "config.json").exists()
    with pytest.raises(InputError, match="--data-root"):  # a --data-root that is not it either
        MGRSDataset(path, tmp_path)
    assert MGRSDataset(path, tmp_path / "pictures")[0]["image"].size == (224, 224)


# --- objects with their own caption ---------------------------------------------------------------------

@pytest.mark.parametrize("own_caption", ["exclude", "keep"])
def test_objects_with_their_own_caption_need_no_category(own_caption, scene_dataset, tmp_path, capsys):
    """Published: an object with `cap` is read through `cap` alone (label −1)."""
    records = _records(scene_dataset)
    for r in records:
        for s in r["segment"]:
            s["cap"] = f"a lone {s.pop('category')}"
            del s["category_id"]
    path = _write(tmp_path, records)
    (tmp_path / "images").symlink_to(_images(scene_dataset))
    sample = MGRSDataset(path, min_size=8)[0]
    assert sample["own_caption"] and all(sample["own_caption"])
    assert sample["category_ids"].tolist() == [-1] * len(sample["texts"])
    caps = {s["cap"] for s in records[0]["segment"]}
    assert set(sample["texts"]) <= caps and not any(t.startswith(REGION_PROMPT.format("")) for t in sample["texts"])
    code, _, err = _train(["--data", str(path), "--model", f"random:{TINY}", "--set", f"own_caption={own_caption}"],
                          tmp_path / "run", capsys)
    assert code == 0, err
    (record,) = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert np.isfinite(record["loss/total"])


# --- malformed records ------------------------------------------------------------------------------------

def _with_objects(records: list[dict], after: int) -> int:
    return next(i for i, r in enumerate(records) if i > after and r["segment"])


def _no_category_id(records):
    i = _with_objects(records, 1)
    del records[i]["segment"][0]["category_id"]
    return i, "category_id"


def _bbox_as_list(records):
    i = _with_objects(records, 2)
    records[i]["segment"][0]["bbox"] = list(records[i]["segment"][0]["bbox"].values())
    return i, "'bbox' is a list"


def _bbox_coordinate_as_text(records):
    i = _with_objects(records, 3)
    records[i]["segment"][-1]["bbox"]["y2"] = "120"
    return i, "'y2'"


def _no_image_path(records):
    del records[4]["global_filepath"]
    return 4, "global_filepath"


def _no_caption(records):
    for key in ("global_caption", "detailed_caption", "brief_caption"):
        records[5].pop(key, None)
    return 5, "no caption"


def _record_not_an_object(records):
    records[6] = [records[6]["global_filepath"]]
    return 6, "not an object"


def _segment_not_a_list(records):
    records[7]["segment"] = {"bbox": {"x1": 0, "y1": 0, "x2": 100, "y2": 100}}
    return 7, "'segment'"


@pytest.mark.parametrize("spoil", [_no_category_id, _bbox_as_list, _bbox_coordinate_as_text, _no_image_path,
                                   _no_caption, _record_not_an_object, _segment_not_a_list])
def test_malformed_records_end_with_one_line_naming_record_and_field(spoil, scene_dataset, tmp_path, capsys):
    records = _records(scene_dataset)
    index, field = spoil(records)
    path = _write(tmp_path, records)
    (tmp_path / "images").symlink_to(_images(scene_dataset))
    code, _, err = _train(["--data", str(path), "--model", f"random:{TINY}"], tmp_path / "run", capsys)
    _one_line(code, err, f"record {index}:", field)
    assert not (tmp_path / "run").exists()  # refused before a model was made or anything written


def test_a_malformed_record_from_the_command_line(scene_dataset, tmp_path):
    """The real process: one line on stderr, exit status 2."""
    records = _records(scene_dataset)
    index, field = _no_category_id(records)
    path = _write(tmp_path, records)
    (tmp_path / "images").symlink_to(_images(scene_dataset))
    result = subprocess.run([sys.executable, "-m", "training.train", "--stage", "2", "--data", str(path),
                             "--model", f"random:{TINY}", "-o", str(tmp_path / "run"), "-q"],
                            capture_output=True, text=True, cwd=REPO)
    _one_line(result.returncode, result.stderr, f"record {index}:", field)


# --- boxes clipped to the image ---------------------------------------------------------------------------

def _clipped(box: dict, width: int, height: int) -> tuple:
    """The published rule (data.py's expand_bbox at scale 1): the box within [0, W] × [0, H]."""
    return (max(box["x1"], 0), max(box["y1"], 0), min(box["x2"], width), min(box["y2"], height))


def _area(b: tuple) -> float:
    return (b[2] - b[0]) * (b[3] - b[1])


def test_boxes_are_clipped_to_the_image_before_the_area_filter_and_the_crop(tmp_path):
    width, height, min_size = 200, 160, 40
    pixels = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    (tmp_path / "images").mkdir()
    Image.fromarray(pixels).save(tmp_path / "images" / "a.png")
    corner = {"x1": -20, "y1": -10, "x2": 60, "y2": 50}          # over the top-left corner
    edge = {"x1": 150, "y1": 100, "x2": 260, "y2": 200}          # over the bottom-right corner
    sliver = {"x1": width - 10, "y1": 0, "x2": width + 90, "y2": 100}  # large, but mostly outside
    own_size = {"x1": 50, "y1": 50, "x2": 150, "y2": 150, "W": 100, "H": 100}  # the record's W/H: 100 × 100
    segments = [{"bbox": b, "category": "thing", "category_id": 0} for b in (corner, edge, sliver, own_size)]
    path = _write(tmp_path, [{"global_filepath": "images/a.png", "global_caption": "a scene", "segment": segments}])
    want = {_clipped(corner, width, height), _clipped(edge, width, height), _clipped(own_size, 100, 100)}
    assert _area(_clipped(sliver, width, height)) < min_size ** 2 <= _area(tuple(sliver.values()))
    assert all(_area(b) >= min_size ** 2 for b in want)
    sample = MGRSDataset(path, min_size=min_size, max_boxes=8)[0]
    got = [tuple(b) for b in sample["boxes"].tolist()]
    assert set(got) == want and len(got) == len(want)  # the sliver is left out
    for box, crop in zip(got, sample["crops"]):
        x1, y1, x2, y2 = (round(v) for v in box)
        assert np.array_equal(np.asarray(crop), pixels[y1:y2, x1:x2])  # cut inside the image, no padding



def test_a_validation_csv_that_cannot_serve_fails_before_training(scene_dataset, tmp_path, capsys):
    """--val-data without a 'label' column was found out after the first epoch (its minutes or hours
    spent); now before the model loads, and nothing is written."""
    (tmp_path / "val.csv").write_text("filepath,title\na.png,a field\n")
    path = _write(tmp_path / "mgrs", _records(scene_dataset))
    code, _, err = _train(["--data", str(path), "--data-root", str(_images(scene_dataset).parent),
                           "--model", f"random:{TINY}", "--val-data", str(tmp_path / "val.csv")],
                          tmp_path / "run", capsys)
    _one_line(code, err, "val.csv: expected a 'label' column")
    assert not (tmp_path / "run" / "checkpoints").exists()
