"""`farslip eval ovss --upsampler`: the run is filed as `<preset>+jbu` beside the plain one, and a
checkpoint that does not fit the model stops the run in one line before any image is read."""

from __future__ import annotations

import json

import torch

from engine.cli import main
from tests.engine.conftest import make_clip
from tests.engine.jbu_checkpoints import random_state, write_released
from tests.training.test_eval_ovss import _loveda


def test_eval_ovss_with_upsampler_is_filed_beside_the_plain_run(tmp_path, capsys):
    ckpt = tmp_path / "tiny.pt"
    torch.save(make_clip().state_dict(), ckpt)
    root = _loveda(tmp_path / "LoveDA", n=1)
    out = tmp_path / "res"
    common = ["eval", "ovss", "--dataset", "loveda", "--root", str(root), "--model", str(ckpt), "--arch",
              "tiny-vit-16", "-o", str(out), "-q"]
    assert main(common) == 0
    weights = write_released(tmp_path / "jbu.ckpt", random_state(32))
    code = main([*common, "--upsampler", str(weights)])
    assert code == 0, capsys.readouterr().err
    plain = json.loads(next(out.glob("ovss_loveda_paper_*.json")).read_text())
    guided = json.loads(next(out.glob("ovss_loveda_paper+jbu_*.json")).read_text())
    assert guided["preset"] == "paper+jbu" and guided["upsampler"] == "jbu.ckpt" and guided["images"] == 1
    assert plain["upsampler"] is None
    assert "| paper+jbu |" in (out / "report.md").read_text()
    capsys.readouterr()
    wrong = write_released(tmp_path / "d512.ckpt", random_state(512, "jbu_stack"))
    assert main([*common, "--upsampler", str(wrong)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "512-d features" in err[0]
