"""OVSS evaluation end to end: dataset layouts written by the test, the engine's dense code, a report."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from engine.cli import main
from engine.errors import InputError
from training.evaluate.ovss import evaluate_ovss, predict, segmenter_for
from training.evaluate.ovss_datasets import DATASETS, get_dataset, samples
from training.data.synthetic import scene


def _loveda(root, n=3):
    """LoveDA layout: img_dir/val/*.png, ann_dir/val/*.png, labels 0 = no data, 1..7 classes."""
    (root / "img_dir" / "val").mkdir(parents=True)
    (root / "ann_dir" / "val").mkdir(parents=True)
    for i in range(n):
        rgb, labels = scene(256, 320, seed=i)
        Image.fromarray(rgb.transpose(1, 2, 0)).save(root / "img_dir" / "val" / f"{i}.png")
        ann = (labels + 1).astype(np.uint8)  # 1..4 used
        ann[:10] = 0  # a no-data strip: ignored
        Image.fromarray(ann).save(root / "ann_dir" / "val" / f"{i}.png")
    return root


def _udd5(root):
    (root / "val" / "src").mkdir(parents=True)
    (root / "val" / "gt").mkdir(parents=True)
    rgb, labels = scene(200, 300)
    Image.fromarray(rgb.transpose(1, 2, 0)).save(root / "val" / "src" / "a.JPG")
    Image.fromarray(np.minimum(labels, 4).astype(np.uint8)).save(root / "val" / "gt" / "a.png")
    return root


def test_all_eight_benchmarks_are_known_with_their_conventions():
    assert set(DATASETS) == {"openearthmap", "loveda", "isaid", "potsdam", "vaihingen", "uavid", "udd5", "vdd"}
    loveda = get_dataset("LoveDA")
    assert loveda.to_train_ids(np.array([0, 1, 7, 255])).tolist() == [255, 0, 6, 255]
    assert get_dataset("potsdam").background == 5 and get_dataset("udd5").image_suffix == ".JPG"
    assert get_dataset("iSAID").label_suffix == "_instance_color_RGB.png"
    with pytest.raises(InputError, match="unknown OVSS dataset"):
        get_dataset("cityscapes")


def test_readers_follow_the_public_layouts(tmp_path):
    names = [n for n, _, _ in samples(get_dataset("loveda"), _loveda(tmp_path / "LoveDA"))]
    assert names == ["0.png", "1.png", "2.png"]
    _, image, label = next(samples(get_dataset("udd5"), _udd5(tmp_path / "UDD5")))
    assert image.shape == (200, 300, 3) and label.max() <= 4
    with pytest.raises(InputError, match="expected folder"):
        get_dataset("vdd").pairs(tmp_path / "nothing")


def test_prediction_uses_the_448_protocol_and_label_size(tiny_model):
    segmenter = segmenter_for(tiny_model, get_dataset("loveda"), "paper")
    image = scene(1024, 1024)[0].transpose(1, 2, 0)
    pred = predict(segmenter, image, (1024, 1024))
    assert pred.shape == (1024, 1024) and pred.max() < 7
    enhanced = segmenter_for(tiny_model, get_dataset("potsdam"), "enhanced")
    assert enhanced.options.prob_threshold == 0.1 and enhanced.background_index == 5
    assert enhanced.options.global_bias == 0.3


def test_evaluation_resumes_and_reports_beside_the_paper(tmp_path, tiny_model, capsys):
    root = _loveda(tmp_path / "LoveDA", n=4)
    dataset = get_dataset("loveda")
    partial = evaluate_ovss(tiny_model, dataset, root, "paper", tmp_path / "out", limit=2)
    assert partial["images"] == 2
    seen = []
    full = evaluate_ovss(tiny_model, dataset, root, "paper", tmp_path / "out",
                         progress=lambda done, total: seen.append(done))
    assert full["images"] == 4 and seen == [3, 4]  # only the missing images were run
    fresh = evaluate_ovss(tiny_model, dataset, root, "paper")
    assert fresh["miou"] == pytest.approx(full["miou"])
    assert 0 <= full["miou"] <= 100 and set(full["per_class_iou"]) == {c.split(",")[0] for c in dataset.classes}


def test_cli_writes_json_and_markdown(tmp_path, capsys):
    import torch

    from tests.engine.conftest import make_clip

    ckpt = tmp_path / "tiny.pt"
    torch.save(make_clip().state_dict(), ckpt)
    root = _loveda(tmp_path / "LoveDA", n=2)
    code = main(["eval", "ovss", "--dataset", "loveda", "--root", str(root), "--model", str(ckpt), "--arch",
                 "tiny-vit-16", "-o", str(tmp_path / "res"), "-q"])
    assert code == 0, capsys.readouterr().err
    result = json.loads(next((tmp_path / "res").glob("ovss_loveda_paper_*.json")).read_text())
    assert result["images"] == 2
    report = (tmp_path / "res" / "report.md").read_text()
    assert "| paper: FarSLIP2 ViT-B-16 | paper |" in report and "35.41" in report
    assert main(["eval", "ovss", "--dataset", "loveda", "--root", str(tmp_path / "missing"), "--model", str(ckpt),
                 "-o", str(tmp_path / "res")]) == 2
    assert "expected folder" in capsys.readouterr().err
