"""The MGRS-style builder: every source format, tiling that keeps boxes on their objects, problems
counted, resumable and deterministic runs, the text_info.json schema."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from engine.cli import main
from training.data.mgrs_builder import BuildOptions, build_mgrs
from training.data.synthetic import scene

ROOF = 2


def _roof_boxes(labels: np.ndarray) -> list[tuple[int, int, int, int]]:
    lab, _ = ndimage.label(labels == ROOF)
    return [(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in ndimage.find_objects(lab)]


@pytest.fixture
def dota(tmp_path):
    root = tmp_path / "DOTA"
    (root / "images").mkdir(parents=True)
    (root / "labelTxt").mkdir()
    rgb, labels = scene(700, 900, seed=1)
    Image.fromarray(rgb.transpose(1, 2, 0)).save(root / "images" / "P0001.png")
    lines = ["imagesource:synthetic", "gsd:0.5"]
    for x1, y1, x2, y2 in _roof_boxes(labels):  # oriented quadrilaterals, here axis-aligned corners
        lines.append(f"{x1} {y1} {x2} {y1} {x2} {y2} {x1} {y2} roof 0")
    lines += ["not a box line", "5 5 6 5 6 6 5 6 small-vehicle 1", "9000 9000 9100 9000 9100 9100 9000 9100 ship 0"]
    (root / "labelTxt" / "P0001.txt").write_text("\n".join(lines))
    return root, rgb, labels


def _voc(tmp_path):
    root = tmp_path / "DIOR"
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "JPEGImages-trainval").mkdir(exist_ok=True)
    Image.fromarray(scene(300, 300, seed=2)[0].transpose(1, 2, 0)).save(root / "JPEGImages-trainval" / "00001.jpg")
    (root / "Annotations" / "00001.xml").write_text(
        "<annotation><filename>00001.jpg</filename><object><name>harbor</name><bndbox><xmin>10</xmin>"
        "<ymin>20</ymin><xmax>120</xmax><ymax>90</ymax></bndbox></object><object><name>Expressway-toll-station"
        "</name><bndbox><xmin>150</xmin><ymin>150</ymin><xmax>250</xmax><ymax>260</ymax></bndbox></object></annotation>")
    (root / "Annotations" / "broken.xml").write_text("<annotation><object>")
    return root


def _coco(tmp_path):
    folder = tmp_path / "coco"
    (folder / "images").mkdir(parents=True)
    Image.fromarray(scene(256, 256, seed=3)[0].transpose(1, 2, 0)).save(folder / "images" / "a.png")
    (folder / "images" / "corrupt.png").write_bytes(b"\x89PNG not really")
    data = {"images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "corrupt.png"},
                       {"id": 1, "file_name": "a.png"}],
            "categories": [{"id": 7, "name": "Storage_Tank"}],
            "annotations": [{"image_id": 1, "bbox": [30, 40, 50, 60], "category_id": 7},
                            {"image_id": 1, "bbox": [10, 10, 20, 20], "category_id": 99},
                            {"image_id": 2, "bbox": [1, 1, 30, 30], "category_id": 7}]}
    (folder / "instances.json").write_text(json.dumps(data))
    return folder / "instances.json"


def test_tiles_keep_every_box_on_its_object(tmp_path, dota):
    root, rgb, labels = dota
    card = build_mgrs([f"dota:{root}"], tmp_path / "out", BuildOptions(tile=400))
    records = json.loads((tmp_path / "out" / "text_info.json").read_text())
    assert len(records) > 1  # the 900 x 700 scene was cut into tiles of at most 400 px
    roofs = 0
    for record in records:
        tile = np.asarray(Image.open(tmp_path / "out" / record["global_filepath"]))
        assert tile.shape[0] <= 400 and tile.shape[1] <= 400
        for s in record["segment"]:
            b = s["bbox"]
            assert (b["W"], b["H"]) == (tile.shape[1], tile.shape[0])
            patch = tile[int(b["y1"]):int(b["y2"]), int(b["x1"]):int(b["x2"])].reshape(-1, 3).astype(int)
            red = (patch[:, 0] > patch[:, 1] + 60).mean()  # roofs are red in the synthetic scene
            assert red > 0.9, (record["global_filepath"], b, red)
            ty, tx = (int(v) for v in record["global_filepath"].rsplit(".", 1)[0].split("_")[-2:])
            truth = labels[ty + int(b["y1"]):ty + int(b["y2"]), tx + int(b["x1"]):tx + int(b["x2"])]
            assert (truth == ROOF).mean() > 0.95  # against the exact mask, in whole-scene coordinates
            roofs += 1
    assert roofs >= len(_roof_boxes(labels))
    assert card["categories"] == {"roof": roofs}
    assert card["problems"] == {"line that is no box": 1, "box outside the image": 1, "box smaller than min_box": 1}


def test_every_format_round_trips_with_problems_counted(tmp_path):
    out = tmp_path / "out"
    card = build_mgrs([f"dior:{_voc(tmp_path)}", f"coco:{_coco(tmp_path)}"], out)
    records = json.loads((out / "text_info.json").read_text())
    categories = {s["category"] for r in records for s in r["segment"]}
    assert categories == {"harbor", "toll station", "storage tank"}  # names normalised through the synonym table
    for r in records:  # MGRS-200k's schema
        assert set(r) >= {"global_filepath", "global_caption", "detailed_caption", "brief_caption", "segment"}
        assert (out / r["global_filepath"]).exists()
        for s in r["segment"]:
            assert set(s["bbox"]) == {"x1", "y1", "x2", "y2", "W", "H"}
            assert s["category_id"] == card["category_ids"][s["category"]]
            assert 0 <= s["bbox"]["x1"] < s["bbox"]["x2"] <= s["bbox"]["W"]
    problems = card["problems"]
    assert problems["unreadable XML"] == 1 and problems["unreadable image"] == 1
    assert problems["unknown category id"] == 1 and problems["duplicated image id"] == 1
    assert "storage tank" in records[-1]["brief_caption"]
    assert (out / "card.md").read_text().count("| storage tank |") == 1


def test_reruns_resume_and_are_deterministic(tmp_path, dota):
    root, _, _ = dota
    first = build_mgrs([f"dota:{root}"], tmp_path / "a", BuildOptions(tile=400))
    again = build_mgrs([f"dota:{root}", f"dior:{_voc(tmp_path)}"], tmp_path / "a", BuildOptions(tile=400))
    log = (tmp_path / "a" / "progress.jsonl").read_text().splitlines()
    assert sum('"dota:P0001"' in line for line in log) == 1  # done once, not again
    assert again["images"] > first["images"]
    other = build_mgrs([f"dota:{root}", f"dior:{_voc(tmp_path)}"], tmp_path / "b", BuildOptions(tile=400))
    assert (tmp_path / "a" / "text_info.json").read_text() == (tmp_path / "b" / "text_info.json").read_text()
    assert other == again


def test_plugin_labels_gpkg_over_a_raster(tmp_path):
    import shapely
    from pyogrio.raw import write

    from tests.engine.rasters import write_raster

    raster = write_raster(tmp_path / "ortho.tif", scene(300, 400)[0])  # origin 500000, 5200000, 0.5 m
    box = shapely.box(500010.0, 5199900.0, 500040.0, 5199960.0)  # cols 20-80, rows 80-200
    write(str(tmp_path / "labels.gpkg"), np.array([shapely.to_wkb(box)], dtype=object),
          [np.array(["Water"], dtype=object)], ["class"], layer="FarSLIP labels", driver="GPKG",
          geometry_type="Polygon", crs="EPSG:32633")
    build_mgrs([f"gpkg:{tmp_path / 'labels.gpkg'}@{raster}"], tmp_path / "out")
    record = json.loads((tmp_path / "out" / "text_info.json").read_text())[0]
    assert record["segment"][0]["category"] == "water"
    assert record["segment"][0]["bbox"]["x1"] == pytest.approx(20) and record["segment"][0]["bbox"]["y2"] == pytest.approx(200)


def test_cli_build_mgrs_and_bad_sources(tmp_path, capsys, dota):
    root, _, _ = dota
    assert main(["data", "build-mgrs", "--source", f"dota:{root}", "-o", str(tmp_path / "o"), "-q"]) == 0
    assert (tmp_path / "o" / "card.json").exists()
    assert main(["data", "build-mgrs", "--source", "yolo:/x", "-o", str(tmp_path / "o2")]) == 2
    assert "unknown source" in capsys.readouterr().err
    assert main(["data", "build-mgrs", "--source", f"dota:{tmp_path / 'nothing'}", "-o", str(tmp_path / "o3")]) == 2
    assert "expected" in capsys.readouterr().err


def test_dota_names_with_spaces_card_counts_what_training_uses_and_captions_inflect(tmp_path):
    root = tmp_path / "DOTA"
    (root / "images").mkdir(parents=True)
    (root / "labelTxt").mkdir()
    Image.fromarray(scene(600, 600, seed=4)[0].transpose(1, 2, 0)).save(root / "images" / "P0002.png")

    def quad(x1, y1, x2, y2):
        return f"{x1} {y1} {x2} {y1} {x2} {y2} {x1} {y2}"

    lines = [f"{quad(10, 10, 110, 110)} solar panel 0", f"{quad(200, 10, 300, 110)} solar panel 1",
             f"{quad(10, 200, 40, 230)} Boeing 737 1",  # 30 px: under stage 2's 64² px
             *(f"{quad(100 + 80 * i, 300, 170 + 80 * i, 370)} trees 0" for i in range(5))]
    (root / "labelTxt" / "P0002.txt").write_text("\n".join(lines))
    card = build_mgrs([f"dota:{root}"], tmp_path / "out", BuildOptions(tile=1024))
    assert card["categories"] == {"solar panel": 2, "boeing 737": 1, "trees": 5}
    assert card["objects"] == 8 and card["objects_in_size_range"] == 7
    assert card["objects_per_epoch"] == 4  # one image: at most 4 objects an epoch
    assert card["categories_in_size_range"] == {"solar panel": 2, "trees": 5}
    md = (tmp_path / "out" / "card.md").read_text()
    assert "7 within stage 2's 64²–1024² px area range, 4 used per epoch" in md
    (record,) = json.loads((tmp_path / "out" / "text_info.json").read_text())
    assert "five trees, two solar panels and one boeing 737" in record["brief_caption"]

    from training.data.captions import _count_phrase

    assert [_count_phrase(c, n) for c, n in (("trees", 1), ("tree", 2), ("solar panel", 2), ("ferry", 3),
                                             ("bus", 2), ("glass", 1), ("aircraft", 2))] == [
        "one tree", "two trees", "two solar panels", "three ferries", "two buses", "one glass", "two aircraft"]
