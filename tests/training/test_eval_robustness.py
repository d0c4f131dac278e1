"""`farslip eval` never mixes models or data through its saved state, and answers bad input with one line.

Everything runs through the CLI on tiny checkpoints and synthetic data written in tmp_path."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.cli import main
from tests.engine.conftest import TINY, make_clip
from tests.training.test_eval_ovss import _loveda
from training.data.synthetic import scene


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two tiny checkpoints with different weights (seeds 0 and 1)."""
    folder = tmp_path_factory.mktemp("models")
    paths = []
    for seed in (0, 1):
        path = folder / f"model{seed}.pt"
        torch.save(make_clip(seed=seed).state_dict(), path)
        paths.append(path)
    return paths


def _model(path):
    return ["--model", str(path), "--arch", TINY, "-q"]


def _one_error_line(capsys, expected: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("farslip: error: ") and expected in lines[0], err
    return lines[0]


# --- OVSS resume state ---------------------------------------------------------------------------

def _ovss(root, out, model, *extra):
    return main(["eval", "ovss", "--dataset", "loveda", "--root", str(root), "-o", str(out), *_model(model), *extra])


def _miou(out, model):
    return json.loads((out / f"ovss_loveda_paper_{Path(model).stem}.json").read_text())


def test_ovss_state_of_another_model_is_not_resumed(tmp_path, models, capsys):
    a, b = models
    root = _loveda(tmp_path / "LoveDA", n=3)
    assert _ovss(root, tmp_path / "fresh", b) == 0  # B alone, in its own folder
    fresh = _miou(tmp_path / "fresh", b)
    assert _ovss(root, tmp_path / "res", a, "--limit", "2") == 0  # A stopped after two images
    a_partial = _miou(tmp_path / "res", a)
    assert a_partial["miou"] != pytest.approx(fresh["miou"])  # the two models do differ
    capsys.readouterr()
    assert _ovss(root, tmp_path / "res", b) == 0  # B in the same folder
    err = capsys.readouterr().err
    assert "farslip: note: loveda_paper_state.npz" in err and "not resumed, starting afresh" in err
    mixed = _miou(tmp_path / "res", b)
    assert mixed["images"] == 3 and mixed["miou"] == pytest.approx(fresh["miou"])
    assert mixed["per_class_iou"] == pytest.approx(fresh["per_class_iou"])
    assert mixed["model_sha256"] == fresh["model_sha256"] != a_partial["model_sha256"]


def test_ovss_same_model_resumes_but_not_a_smaller_limit_or_changed_files(tmp_path, models, capsys):
    a, _ = models
    root = _loveda(tmp_path / "LoveDA", n=3)
    assert _ovss(root, tmp_path / "fresh", a) == 0
    fresh = _miou(tmp_path / "fresh", a)
    assert _ovss(root, tmp_path / "res", a, "--limit", "2") == 0
    capsys.readouterr()
    assert _ovss(root, tmp_path / "res", a) == 0  # the same model continues the smoke run
    assert "note" not in capsys.readouterr().err
    assert _miou(tmp_path / "res", a)["miou"] == pytest.approx(fresh["miou"])
    assert _ovss(root, tmp_path / "res", a, "--limit", "1") == 0  # the state holds 3 images: not 1
    assert "not resumed" in capsys.readouterr().err
    one = _miou(tmp_path / "res", a)
    assert one["images"] == 1
    assert _ovss(root, tmp_path / "one", a, "--limit", "1") == 0
    assert one["miou"] == pytest.approx(_miou(tmp_path / "one", a)["miou"])
    # an image replaced after it was evaluated is evaluated again
    assert _ovss(root, tmp_path / "res", a) == 0
    capsys.readouterr()
    image = root / "img_dir" / "val" / "0.png"
    Image.fromarray(scene(256, 320, seed=9)[0].transpose(1, 2, 0)).save(image)
    os.utime(image, ns=(1, 1))
    assert _ovss(root, tmp_path / "res", a) == 0
    assert "not resumed" in capsys.readouterr().err
    assert _ovss(root, tmp_path / "changed", a) == 0
    assert _miou(tmp_path / "res", a)["miou"] == pytest.approx(_miou(tmp_path / "changed", a)["miou"])


def test_ovss_corrupt_image_is_one_line(tmp_path, models, capsys):
    root = _loveda(tmp_path / "LoveDA", n=2)
    (root / "img_dir" / "val" / "1.png").write_bytes(b"not a png")
    assert _ovss(root, tmp_path / "res", models[0]) == 2
    _one_error_line(capsys, "loveda: cannot read")
    assert _ovss(root, tmp_path / "res", models[0], "--limit", "0") == 2
    _one_error_line(capsys, "--limit must be at least 1")


# --- zero-shot embedding caches ------------------------------------------------------------------

@pytest.fixture
def data(tmp_path):
    (tmp_path / "images").mkdir()
    for i in range(12):
        rgb, _ = scene(120 + 8 * i, 160, seed=i)
        Image.fromarray(rgb.transpose(1, 2, 0)).save(tmp_path / "images" / f"{i}.png")
    names = ["farmland", "river", "residential", "forest", "road", "lake"]
    (tmp_path / "classnames.txt").write_text("\n".join(names) + "\n")
    (tmp_path / "test.csv").write_text("filepath,label\n" + "".join(f"images/{i}.png,{i % 6}\n" for i in range(12)))
    captions = [f"{names[i % 6]} number {i}" for i in range(12)]
    (tmp_path / "caps.csv").write_text("filepath,caption\n" + "".join(f"images/{i}.png,{c}\n" for i, c in enumerate(captions)))
    return tmp_path


def _classify(data, out, model, *extra):
    code = main(["eval", "classify", "--csv", str(data / "test.csv"), "--classnames", str(data / "classnames.txt"),
                 "--name", "aid", "-o", str(out), *_model(model), *extra])
    return code, (json.loads((out / f"classify_aid_{Path(model).stem}.json").read_text()) if code == 0 else None)


def _retrieval(data, out, model, csv="caps.csv", *extra):
    code = main(["eval", "retrieval", "--csv", str(data / csv), "--name", "rsicd", "-o", str(out), *_model(model), *extra])
    return code, (json.loads((out / f"retrieval_rsicd_{Path(model).stem}.json").read_text()) if code == 0 else None)


def _varied_images(folder, seed):
    """Noise and flat-colour images, one class each: images a tiny random model tells apart."""
    rng = np.random.default_rng(seed)
    for i in range(12):
        shape = (160, 160, 3)
        pixels = rng.random(shape) if (i + seed) % 2 == 0 else rng.random(3) * np.ones(shape)
        path = folder / "images" / f"{i}.png"
        Image.fromarray((255 * pixels).astype(np.uint8)).save(path)
        os.utime(path, ns=(10**9 * (seed + 1), 10**9 * (seed + 1)))


@pytest.fixture
def varied(tmp_path):
    (tmp_path / "images").mkdir()
    _varied_images(tmp_path, 0)
    (tmp_path / "classnames.txt").write_text("\n".join(f"class {k}" for k in range(12)) + "\n")
    (tmp_path / "test.csv").write_text("filepath,label\n" + "".join(f"images/{i}.png,{i}\n" for i in range(12)))
    return tmp_path


def test_a_second_model_classifies_with_its_own_embeddings(varied, models):
    a, b = models
    _, fresh_b = _classify(varied, varied / "fresh", b)
    _, fresh_a = _classify(varied, varied / "res", a)
    _, shared_b = _classify(varied, varied / "res", b)
    assert (shared_b["top1"], shared_b["top5"]) == pytest.approx((fresh_b["top1"], fresh_b["top5"]))
    _, again_a = _classify(varied, varied / "res", a)  # A again where B last wrote: A's own figures
    assert (again_a["top1"], again_a["top5"]) == pytest.approx((fresh_a["top1"], fresh_a["top5"]))
    assert shared_b["model_sha256"] != fresh_a["model_sha256"]


def test_a_second_model_retrieves_with_its_own_embeddings(data, models):
    a, b = models
    _, fresh_b = _retrieval(data, data / "fresh", b)
    _retrieval(data, data / "res", a)
    _, shared_b = _retrieval(data, data / "res", b)
    assert shared_b["i2t"] == pytest.approx(fresh_b["i2t"]) and shared_b["t2i"] == pytest.approx(fresh_b["t2i"])


def test_a_replaced_image_is_encoded_again(varied, models):
    a, _ = models
    _classify(varied, varied / "res", a)
    _varied_images(varied, 1)  # every image replaced by another one
    _, cached = _classify(varied, varied / "res", a)
    _, fresh = _classify(varied, varied / "fresh", a)
    assert (cached["top1"], cached["top5"]) == pytest.approx((fresh["top1"], fresh["top5"]))


# --- retrieval captions --------------------------------------------------------------------------

def test_empty_captions_are_left_out_and_an_all_empty_set_refused(data, models, capsys):
    a, _ = models
    (data / "empty.csv").write_text("filepath,caption\n" + "".join(f"images/{i}.png,  \n" for i in range(4))
                                    + "images/4.png,\n")
    code, _ = _retrieval(data, data / "res", a, "empty.csv")
    assert code == 2
    _one_error_line(capsys, "empty.csv: every caption is empty (5 rows)")
    lines = (data / "caps.csv").read_text().splitlines()
    (data / "some.csv").write_text("\n".join(lines[:3] + ["images/11.png,   ", "images/2.png,"] + lines[3:]) + "\n")
    code, some = _retrieval(data, data / "res", a, "some.csv")
    assert code == 0
    assert "farslip: note: some.csv: 2 row(s) with an empty caption left out" in capsys.readouterr().err
    _, full = _retrieval(data, data / "full", a)
    assert some["captions"] == 12 and some["empty_captions_dropped"] == 2
    assert some["i2t"] == pytest.approx(full["i2t"]) and some["t2i"] == pytest.approx(full["t2i"])


# --- one-line errors -----------------------------------------------------------------------------

def test_bad_classification_inputs_are_one_line(data, models, capsys):
    a, _ = models
    code = main(["eval", "classify", "--csv", str(data / "test.csv"), "--classnames", str(data / "nope.txt"),
                 "--name", "aid", "-o", str(data / "res"), *_model(a)])
    assert code == 2
    _one_error_line(capsys, f"class names file not found: {data / 'nope.txt'}")
    for cls in ("forest", "river"):
        (data / "AID" / cls).mkdir(parents=True)
    assert main(["eval", "classify", "--csv", str(data / "AID"), "--name", "aid", "-o", str(data / "res"),
                 *_model(a)]) == 2
    _one_error_line(capsys, "hold no images")
    (data / "header.csv").write_text("filepath,label\n")
    assert main(["eval", "classify", "--csv", str(data / "header.csv"), "--classnames", str(data / "classnames.txt"),
                 "--name", "aid", "-o", str(data / "res"), *_model(a)]) == 2
    _one_error_line(capsys, "header.csv: no rows below the header")
    (data / "nolabel.csv").write_text("filepath,label\nimages/0.png,0\nimages/1.png,\n")
    assert main(["eval", "classify", "--csv", str(data / "nolabel.csv"), "--classnames", str(data / "classnames.txt"),
                 "--name", "aid", "-o", str(data / "res"), *_model(a)]) == 2
    _one_error_line(capsys, "nolabel.csv line 3: empty label")
    (data / "badlabel.csv").write_text("filepath,label\nimages/0.png,0\nimages/1.png,0\nimages/2.png,volcano\n")
    assert main(["eval", "classify", "--csv", str(data / "badlabel.csv"), "--classnames", str(data / "classnames.txt"),
                 "--name", "aid", "-o", str(data / "res"), *_model(a)]) == 2
    _one_error_line(capsys, "badlabel.csv line 4: label 'volcano' is not a class of classnames.txt")
    code, _ = _classify(data, data / "res", a, "--limit", "0")
    assert code == 2
    _one_error_line(capsys, "--limit must be at least 1")


def test_bad_caption_json_is_one_line(data, models, capsys):
    a, _ = models
    (data / "list.json").write_text(json.dumps([{"filename": "0.png", "sentences": [{"raw": "a river"}]}]))
    code, _ = _retrieval(data, data / "res", a, "list.json")
    assert code == 2
    _one_error_line(capsys, "list.json: expected a JSON object with an 'images' list")
    (data / "nofile.json").write_text(json.dumps({"images": [{"sentences": [{"raw": "a river"}]}]}))
    code, _ = _retrieval(data, data / "res", a, "nofile.json")
    assert code == 2
    _one_error_line(capsys, "nofile.json: images[0] has no 'filename'")
    (data / "header.csv").write_text("filepath,caption\n")
    code, _ = _retrieval(data, data / "res", a, "header.csv")
    assert code == 2
    _one_error_line(capsys, "header.csv: no rows below the header")


def test_two_models_evaluated_into_one_folder_both_keep_their_results(varied, models):
    """The README's usage sends every run to one results folder: a second model's result used to
    replace the first's file (and so its row of the report)."""
    out = varied / "results"
    for model in models:
        assert _classify(varied, out, model)[0] == 0
    results = sorted(out.glob("classify_aid_*.json"))
    assert [p.name for p in results] == ["classify_aid_model0.json", "classify_aid_model1.json"]
    report = (out / "report.md").read_text()
    assert all(json.loads(p.read_text())["model"] in report for p in results)
