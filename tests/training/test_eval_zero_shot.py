"""Zero-shot classification and retrieval evaluation on CSV fixtures written by the test."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from engine.cli import main
from engine.errors import InputError
from training.data.synthetic import scene
from training.evaluate.zero_shot import clip_view, evaluate_classification, evaluate_retrieval


@pytest.fixture
def data(tmp_path):
    (tmp_path / "images").mkdir()
    for i in range(6):
        rgb, _ = scene(180 + 10 * i, 240, seed=i)
        Image.fromarray(rgb.transpose(1, 2, 0)).save(tmp_path / "images" / f"{i}.jpg")
    (tmp_path / "classnames.txt").write_text("farmland\nriver\nresidential\n")
    (tmp_path / "test.csv").write_text("filepath,label\n" + "".join(f"images/{i}.jpg,{i % 3}\n" for i in range(6)))
    captions = ["a river next to fields", "fields beside a river", "red roofs", "a road through grass",
                "a river next to fields"]  # the last one repeats caption 0 for another image
    (tmp_path / "rsicd.csv").write_text(
        "filepath,title\n" + "".join(f"images/{i}.jpg,{c}\n" for i, c in zip([0, 0, 1, 2, 3], captions)))
    return tmp_path


def test_clip_view_is_a_centre_crop_of_the_shorter_side(data):
    view = clip_view(data / "images" / "0.jpg", 224)
    assert view.shape == (224, 224, 3) and 0 <= view.min() and view.max() <= 1


def test_classification_top1_and_top5(data, tiny_model):
    result = evaluate_classification(tiny_model, data / "test.csv", data / "classnames.txt")
    assert result["images"] == 6 and result["classes"] == 3
    assert 0 <= result["top1"] <= 100 and result["top5"] == pytest.approx(100.0)  # 3 classes: top-5 covers all
    assert result["units"] == "percent"


def test_retrieval_deduplicates_captions_and_counts_positives(data, tiny_model):
    result = evaluate_retrieval(tiny_model, data / "rsicd.csv")
    assert result["images"] == 4 and result["captions"] == 4
    assert result["i2t"]["R@10"] == pytest.approx(100.0) and result["t2i"]["R@10"] == pytest.approx(100.0)
    assert result["context_length"] == 77 and result["units"] == "percent"


def test_bad_inputs(data, tiny_model):
    with pytest.raises(InputError, match="not a class"):
        (data / "bad.csv").write_text("filepath,label\nimages/0.jpg,9\n")
        evaluate_classification(tiny_model, data / "bad.csv", data / "classnames.txt")
    with pytest.raises(InputError, match="no caption column"):
        evaluate_retrieval(tiny_model, data / "test.csv")
    with pytest.raises(InputError, match="CSV not found"):
        evaluate_retrieval(tiny_model, data / "none.csv")


def test_cli_classify_and_retrieval(data, capsys):
    import torch

    from tests.engine.conftest import make_clip

    torch.save(make_clip().state_dict(), data / "tiny.pt")
    model = ["--model", str(data / "tiny.pt"), "--arch", "tiny-vit-16", "-q"]
    assert main(["eval", "classify", "--csv", str(data / "test.csv"), "--classnames", str(data / "classnames.txt"),
                 "--name", "aid", "-o", str(data / "res"), *model]) == 0
    assert json.loads(next((data / "res").glob("classify_aid_*.json")).read_text())["dataset"] == "aid"
    assert main(["eval", "retrieval", "--csv", str(data / "rsicd.csv"), "--name", "rsicd",
                 "-o", str(data / "res"), *model]) == 0
    result = json.loads(next((data / "res").glob("retrieval_rsicd_*.json")).read_text())
    assert "i2t" in result and result["caption_prefix"] == "a satellite image. "  # --name rsicd: as published
    assert main(["eval", "retrieval", "--csv", str(data / "rsicd.csv"), "--name", "rsicd", "--caption-prefix", "",
                 "-o", str(data / "plain"), *model]) == 0
    assert json.loads(next((data / "plain").glob("retrieval_rsicd_*.json")).read_text())["caption_prefix"] == ""
    report = (data / "res" / "report.md").read_text()
    assert "| paper: FarSLIP-s2 ViT-B-16 | 57.98 | 73.95 |" in report  # beside the published figures
    assert "| paper: FarSLIP-s2 ViT-B-16 | 27.4 | 23.7 |" in report
    own = [line for line in report.splitlines() if line.startswith(f"| {data / 'tiny.pt'} |")]
    assert len(own) == 2  # one classification row, one retrieval row


def test_image_folders_and_caption_json(tmp_path, tiny_model):
    for cls in ("dense_residential", "forest"):
        (tmp_path / "AID" / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(scene(120, 120, seed=i)[0].transpose(1, 2, 0)).save(tmp_path / "AID" / cls / f"{i}.png")
    result = evaluate_classification(tiny_model, tmp_path / "AID")
    assert result["images"] == 4 and result["classes"] == 2
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        Image.fromarray(scene(100, 100, seed=i)[0].transpose(1, 2, 0)).save(tmp_path / "imgs" / f"{i}.jpg")
    data = {"images": [{"filename": f"{i}.jpg", "split": "test" if i < 2 else "train",
                        "sentences": [{"raw": f"scene {i}"}, {"raw": f"another view {i}"}]} for i in range(3)]}
    (tmp_path / "dataset_rsicd.json").write_text(json.dumps(data))
    result = evaluate_retrieval(tiny_model, tmp_path / "dataset_rsicd.json", images_root=tmp_path / "imgs")
    assert result["images"] == 2 and result["captions"] == 4  # the train image is left out


def test_a_rerun_reuses_finished_image_embeddings(data, tiny_model):
    cache = data / "emb.npz"
    first = evaluate_classification(tiny_model, data / "test.csv", data / "classnames.txt", limit=3, cache=cache)
    seen = []
    full = evaluate_classification(tiny_model, data / "test.csv", data / "classnames.txt", cache=cache,
                                   progress=lambda done, total: seen.append((done, total)))
    assert first["images"] == 3 and full["images"] == 6
    assert seen[0][0] > 3 and seen[-1] == (6, 6)  # the first three were not encoded again
    fresh = evaluate_classification(tiny_model, data / "test.csv", data / "classnames.txt")
    assert fresh["top1"] == pytest.approx(full["top1"])
