"""`eval ovss`'s report.md: the measured mIoU is in percent, like the paper's rows beside it."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from engine.cli import main
from training.evaluate.metrics import ConfusionMatrix
from training.evaluate.report import write_report
from tests.training.test_eval_ovss import _loveda


def _row(report: str, start: str) -> list[str]:
    line = next(line for line in report.splitlines() if line.startswith(start))
    return [c.strip() for c in line.strip("|").split("|")]


def test_report_mious_are_percent_beside_the_papers(tmp_path, capsys):
    import torch

    from tests.engine.conftest import make_clip

    ckpt = tmp_path / "tiny.pt"
    torch.save(make_clip().state_dict(), ckpt)
    root = _loveda(tmp_path / "LoveDA", n=2)
    assert main(["eval", "ovss", "--dataset", "loveda", "--root", str(root), "--model", str(ckpt), "--arch",
                 "tiny-vit-16", "-o", str(tmp_path / "res"), "-q"]) == 0
    result = json.loads(next((tmp_path / "res").glob("ovss_loveda_paper_*.json")).read_text())
    per_class = [v for v in result["per_class_iou"].values() if v is not None]
    assert result["units"] == "percent" and result["miou"] == pytest.approx(np.mean(per_class))
    report = (tmp_path / "res" / "report.md").read_text()
    assert report.startswith("# OVSS mIoU (%)")
    ours = _row(report, f"| {ckpt} |")
    paper = _row(report, "| paper: FarSLIP2 ViT-B-16 |")
    column = 2 + ["openearthmap", "loveda"].index("loveda")
    assert float(ours[column]) == round(result["miou"], 2)
    assert float(paper[column]) == 34.23  # the paper's LoveDA figure, in percent too


def test_a_result_in_fractions_is_reported_in_percent(tmp_path):
    cm = ConfusionMatrix(2)
    cm.update(np.array([[0, 1], [1, 1]]), np.array([[0, 1], [0, 1]]))
    (tmp_path / "ovss_loveda_paper.json").write_text(json.dumps(
        {"dataset": "loveda", "preset": "paper", "model": "m", "miou": cm.miou(), "units": "fraction"}))
    row = _row(write_report(tmp_path).read_text(), "| m |")
    assert float(row[3]) == round(100 * cm.miou(), 2) and re.fullmatch(r"\d+\.\d\d", row[3])
