"""Bad input to `farslip data build-mgrs` and `farslip data shards`, on files written in tmp_path: bad
boxes and bad COCO records are dropped and counted in the card, sources and options that cannot work are
refused with one line (`farslip: error: …`, exit 2), never a traceback; shards hold only images that
decode, say what they skipped, and a rerun leaves no shard of the earlier run behind."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from engine.cli import main
from training.data.mgrs_builder import BuildOptions, build_mgrs
from training.data.shards import decode_sample, tar_samples
from training.data.synthetic import scene


def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of `farslip ARGS` (argument errors exit through SystemExit)."""
    try:
        code = main(args)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("farslip: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def _picture(path, size=200, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(scene(size, size, seed=seed)[0].transpose(1, 2, 0)).save(path)


def _dota(root, lines: list[str], size=200):
    _picture(root / "images" / "P1.png", size)
    (root / "labelTxt").mkdir(parents=True, exist_ok=True)
    (root / "labelTxt" / "P1.txt").write_text("\n".join(lines))
    return root


def _quad(x1, y1, x2, y2) -> str:
    return f"{x1} {y1} {x2} {y1} {x2} {y2} {x1} {y2}"


# --- build-mgrs: boxes -------------------------------------------------------------------------------

def test_non_finite_and_mostly_outside_boxes_are_dropped_and_counted(tmp_path):
    root = _dota(tmp_path / "DOTA", [
        f"{_quad(10, 10, 90, 90)} plane 0",                   # kept as it is
        f"{_quad(150, 150, 220, 220)} ship 0",                 # 50 of 70 px inside each way: ~51 % inside, kept, clipped
        "nan nan nan nan nan nan nan nan plane 0",
        "-5 -5 1e9 -5 1e9 1e9 -5 1e9 plane 0",                # covers the image, but almost all of it is outside
        f"{_quad('-inf', 10, 90, 90)} plane 0",
        f"{_quad(10, 10, 'inf', 90)} plane 0",
        f"{_quad(170, 170, 260, 260)} ship 0",                 # 30 of 90 px inside each way: 11 % inside
        f"{_quad(10, 10, 10, 10)} plane 0",                    # no area
        f"{_quad(500, 500, 600, 600)} plane 0",                # wholly outside
    ])
    card = build_mgrs([f"dota:{root}"], tmp_path / "out")
    (record,) = json.loads((tmp_path / "out" / "text_info.json").read_text())
    boxes = sorted((s["category"], s["bbox"]["x1"], s["bbox"]["y1"], s["bbox"]["x2"], s["bbox"]["y2"])
                   for s in record["segment"])
    assert boxes == [("airplane", 10, 10, 90, 90), ("ship", 150, 150, 200, 200)]  # no whole-image box
    assert card["problems"] == {"box with a non-finite coordinate (nan, inf)": 3, "box mostly outside the image": 2,
                                "box with no area": 1, "box outside the image": 1}
    md = (tmp_path / "out" / "card.md").read_text()
    assert "- box with a non-finite coordinate (nan, inf): 3" in md and "- box mostly outside the image: 2" in md


@pytest.mark.parametrize("top", [65535, 4095], ids=["16-bit", "12-bit"])
def test_16_bit_png_is_scaled_to_8_bits_not_white(tmp_path, top):
    """A ramp over the full 16 bits, or over 12 (a sensor's range, stored in 16): the picture survives —
    dark on the left, white on the right, rising — neither clipped to white nor pressed to black."""
    root = tmp_path / "DOTA"
    grey = np.tile(np.linspace(0, top, 200), (200, 1)).astype(np.uint16)
    (root / "images").mkdir(parents=True)
    Image.fromarray(grey).save(root / "images" / "P1.png")
    assert Image.open(root / "images" / "P1.png").mode.startswith("I")
    (root / "labelTxt").mkdir()
    (root / "labelTxt" / "P1.txt").write_text(f"{_quad(10, 10, 90, 90)} plane 0")
    build_mgrs([f"dota:{root}"], tmp_path / "out")
    (record,) = json.loads((tmp_path / "out" / "text_info.json").read_text())
    tile = np.asarray(Image.open(tmp_path / "out" / record["global_filepath"])).astype(int)
    assert tile.shape == (200, 200, 3)
    row = tile[100, :, 0]
    assert (np.diff(row) >= 0).all() and row[0] == 0 and row[-1] == 255
    assert tile[:, :20].mean() < 30 and tile[:, -20:].mean() > 225 and 100 < tile[:, 95:105].mean() < 155


# --- build-mgrs: COCO --------------------------------------------------------------------------------

def _coco(tmp_path, **changes) -> str:
    folder = tmp_path / "coco"
    _picture(folder / "a.png", seed=1)
    _picture(folder / "b.png", seed=2)
    data = {"images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
            "categories": [{"id": 1, "name": "plane"}, {"id": 2, "name": "ship"}],
            "annotations": [{"image_id": 1, "bbox": [10, 10, 80, 80], "category_id": 1},
                            {"image_id": 2, "bbox": [20, 20, 70, 70], "category_id": 2}]}
    data.update(changes)
    path = folder / "instances.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_coco_annotations_of_no_known_image_and_junk_records_are_counted(tmp_path):
    annotations = [{"image_id": 1, "bbox": [10, 10, 80, 80], "category_id": 1},
                   {"bbox": [20, 20, 70, 70], "category_id": 2},                     # no image_id
                   {"image_id": 42, "bbox": [20, 20, 70, 70], "category_id": 2},     # unknown image
                   {"image_id": [1], "bbox": [20, 20, 70, 70], "category_id": 2},    # not an id at all
                   None, 5, "x"]
    card = build_mgrs([f"coco:{_coco(tmp_path, annotations=annotations)}"], tmp_path / "out")
    assert card["problems"] == {"annotation without an image id": 2, "annotation of an unknown image id": 1,
                                "annotation that is not a record": 3}
    assert card["objects"] == 1 and card["source_images"] == 2  # the source's own problems are no image
    assert "- annotation of an unknown image id: 1" in (tmp_path / "out" / "card.md").read_text()


@pytest.mark.parametrize("change, needle", [
    ({"categories": [{"id": 1, "name": "plane"}, {"id": 1, "name": "car"}]}, "category id 1 is named both 'plane' and 'car'"),
    ({"images": {"a": 1}}, "'images' is an object, not a list"),
    ({"annotations": "none"}, "'annotations' is str, not a list"),
])
def test_coco_files_of_the_wrong_shape_are_refused_in_one_line(tmp_path, capsys, change, needle):
    code, _, err = _cli(["data", "build-mgrs", "--source", f"coco:{_coco(tmp_path, **change)}",
                         "-o", str(tmp_path / "out")], capsys)
    _one_line_error(code, err, needle)


def test_a_coco_file_holding_a_list_is_refused_and_same_named_duplicate_categories_are_fine(tmp_path, capsys):
    (tmp_path / "list.json").write_text("[1, 2, 3]")
    code, _, err = _cli(["data", "build-mgrs", "--source", f"coco:{tmp_path / 'list.json'}", "-o",
                         str(tmp_path / "o1")], capsys)
    _one_line_error(code, err, "expected a JSON object", "found a list")
    same = [{"id": 1, "name": "plane"}, {"id": 1, "name": "plane"}, {"id": 2, "name": "ship"}]
    card = build_mgrs([f"coco:{_coco(tmp_path, categories=same)}"], tmp_path / "o2")
    assert card["categories"] == {"airplane": 1, "ship": 1} and card["problems"] == {}


# --- build-mgrs: VOC file names, options, output folder ----------------------------------------------

def test_a_voc_file_name_too_long_for_the_file_system_is_counted_not_fatal(tmp_path):
    root = tmp_path / "VOC"
    _picture(root / "JPEGImages" / "1.png")
    (root / "Annotations").mkdir(parents=True)
    box = "<object><name>ship</name><bndbox><xmin>10</xmin><ymin>20</ymin><xmax>120</xmax><ymax>90</ymax></bndbox></object>"
    (root / "Annotations" / "1.xml").write_text(f"<annotation><filename>1.png</filename>{box}</annotation>")
    (root / "Annotations" / "2.xml").write_text(f"<annotation><filename>{'x' * 400}.jpg</filename>{box}</annotation>")
    card = build_mgrs([f"voc:{root}"], tmp_path / "out")
    assert card["images"] == 1 and card["problems"] == {"missing image": 1}


@pytest.mark.parametrize("option, value, needle", [
    ("--tile", "0", "argument --tile: 0 is too small"), ("--tile", "-1", "argument --tile"),
    ("--tile", "abc", "not a whole number"), ("--min-box", "-3", "argument --min-box: -3"),
    ("--min-box", "nan", "argument --min-box"),
])
def test_build_mgrs_options_that_cannot_work_are_refused(tmp_path, capsys, option, value, needle):
    root = _dota(tmp_path / "DOTA", [f"{_quad(10, 10, 90, 90)} plane 0"])
    code, _, err = _cli(["data", "build-mgrs", "--source", f"dota:{root}", "-o", str(tmp_path / "out"),
                         option, value], capsys)
    _one_line_error(code, err, needle)
    assert not (tmp_path / "out").exists()


def test_build_mgrs_output_naming_a_file_is_one_line(tmp_path, capsys):
    root = _dota(tmp_path / "DOTA", [f"{_quad(10, 10, 90, 90)} plane 0"])
    (tmp_path / "taken").write_text("mine")
    code, _, err = _cli(["data", "build-mgrs", "--source", f"dota:{root}", "-o", str(tmp_path / "taken")], capsys)
    _one_line_error(code, err, "is a file, not a folder")
    assert (tmp_path / "taken").read_text() == "mine"
    with pytest.raises(ValueError, match="--tile"):  # the API checks the same
        build_mgrs([f"dota:{root}"], tmp_path / "api", BuildOptions(tile=0))


# --- data shards -------------------------------------------------------------------------------------

def _png(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)


def _shards(tmp_path, capsys, captions_text: str, *extra: str, name="c.csv", encoding="utf-8"):
    captions = tmp_path / name
    captions.write_bytes(captions_text.encode(encoding))
    return _cli(["data", "shards", "--images", str(tmp_path / "imgs"), "--captions", str(captions),
                 "-o", str(tmp_path / "shards"), *extra], capsys)


def test_shards_skip_and_count_images_that_do_not_decode_and_empty_captions(tmp_path, capsys):
    imgs = tmp_path / "imgs"
    _png(imgs / "a.png", 0)
    _png(imgs / "b.png", 1)
    (imgs / "corrupt.png").write_bytes(b"\x89PNG garbage")
    (imgs / "empty.png").write_bytes(b"")
    (imgs / "half.png").write_bytes((imgs / "a.png").read_bytes()[:200])  # truncated
    csv = ("filepath,caption\na.png,a field\ncorrupt.png,bad\nempty.png,empty\nhalf.png,cut\n"
           "b.png,\nb.png,   \n,orphan caption\nmissing.png,gone\nb.png,a road\n")
    code, out, err = _shards(tmp_path, capsys, csv)
    assert code == 0, err
    assert "2 samples in 1 shard(s), 7 skipped" in out
    assert "rows without an image name or caption: 3" in out
    assert "images missing or not jpg/jpeg/png/webp/tif/tiff: 1" in out
    assert "images that do not decode: 3" in out
    samples = [decode_sample(s) for s in tar_samples(str(tmp_path / "shards" / "00000.tar"))]
    assert [c for _, c in samples] == ["a field", "a road"]  # every packed sample decodes


def test_shards_rerun_removes_the_earlier_runs_shards_only(tmp_path, capsys):
    for i in range(5):
        _png(tmp_path / "imgs" / f"{i}.png", i)
    rows = "".join(f"{i}.png,picture {i}\n" for i in range(5))
    assert _shards(tmp_path, capsys, "filepath,caption\n" + rows, "--per-shard", "2")[0] == 0
    out = tmp_path / "shards"
    assert sorted(p.name for p in out.glob("*.tar")) == ["00000.tar", "00001.tar", "00002.tar"]
    (out / "notes.txt").write_text("keep")
    (out / "backup.tar").write_bytes(b"keep")
    (out / "00007.tar.partial").write_bytes(b"left by a stopped run")
    code, stdout, _ = _shards(tmp_path, capsys, "filepath,caption\n" + rows, "--per-shard", "4")
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["00000.tar", "00001.tar", "backup.tar", "notes.txt", "sizes.json"]
    assert json.loads((out / "sizes.json").read_text()) == {"00000.tar": 4, "00001.tar": 1}
    assert "removed 1 shard(s) of an earlier run" in stdout and "--samples 5" in stdout


def test_shards_output_naming_a_file_and_a_latin1_csv_are_one_line(tmp_path, capsys):
    _png(tmp_path / "imgs" / "a.png", 0)
    (tmp_path / "shards").write_text("mine")
    code, _, err = _shards(tmp_path, capsys, "filepath,caption\na.png,a field\n")
    _one_line_error(code, err, "is a file, not a folder")
    (tmp_path / "shards").unlink()
    code, _, err = _shards(tmp_path, capsys, "filepath,caption\na.png,café\n", name="latin.csv", encoding="latin-1")
    _one_line_error(code, err, "latin.csv", "not UTF-8", "save it as UTF-8")
    code, _, err = _shards(tmp_path, capsys, "filepath,caption\na.png,a\n", "--per-shard", "0")
    _one_line_error(code, err, "--per-shard")
