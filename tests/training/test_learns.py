"""Proof that training learns: a tiny ViT, randomly initialised, trained with stage 1 and then stage 2
on synthetic aerial scenes (`python -m training.train`, as a user runs it), then scored through the
engine on held-out scenes: `segment` mIoU against the exact label rasters, and region labelling of
every object box.

Measured on this project's 2-core machine (tiny-vit-16, 128 training scenes at 224 px, batch 16,
128 steps per stage, lr 1e-3; runs are reproducible, the shard shuffle is seeded), under the published
recipe with stage 2's colour jitter/grayscale off (see `_train`), 10.5 min on a busy machine:
    mIoU             0.000 (start) → 0.085 (stage 1) → 0.314 (stage 2)
    region accuracy  0.095 (start) → 0.222 (stage 1) → 0.762 (stage 2), 63 held-out objects
(the earlier, revised recipe gave 0.100 / 0.058 mIoU and 0.556 region accuracy after stage 1).
With the region loss switched off (region_weight=0) stage 2 ends at a region accuracy of 0.22, so the
region threshold (≥ 0.5) fails on a broken region loss; with no learning the mIoU stays at the start's.
The dense mIoU of a from-scratch 2-layer network moves between 0.06 and 0.32 with small changes to
the run (data order, steps), hence its modest margin; README "Training" lists the runs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.engine.conftest import TINY, make_clip
from training.evaluate.synthetic import score_checkpoint

REPO = Path(__file__).resolve().parents[2]


def _train(stage: int, data: str, model: Path, out: Path) -> Path:
    args = [sys.executable, "-m", "training.train", "--stage", str(stage), "--data", data, "--model", str(model),
            "-o", str(out), "--batch-size", "16", "--lr", "1e-3", "--warmup", "10", "--epochs", "16",
            "--workers", "2", "--set", "weight_decay=0.1", "--set", "min_box=8", "--set", "log_every=32", "-q",
            # the synthetic classes are told apart by colour (blue water, green grass, red roofs): the
            # published colour jitter / grayscale of stage 2 removes the very cue; every other published
            # setting (active teacher with gradient, open_clip's gather) stays
            "--set", "color_jitter_p=0", "--set", "grayscale_p=0"]
    result = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=1200)
    assert result.returncode == 0, result.stderr[-2000:]
    return out / f"FarSLIP{stage}_{TINY}.pt"


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the published recipe back-propagates through the teacher crops; shared CPUs are slow
def test_stage_1_then_stage_2_raise_segmentation_miou_and_region_accuracy(tmp_path):
    from training.data.synthetic import write_scene_dataset

    train = write_scene_dataset(tmp_path / "train", 128, size=224, seed=0)
    held_out = tmp_path / "held"
    write_scene_dataset(held_out, 6, size=224, seed=100_000)
    start = tmp_path / "start.pt"
    torch.save({"state_dict": make_clip(TINY, seed=11).state_dict()}, start)

    stage1 = _train(1, str(train["shards"] / "{0000..0015}.tar"), start, tmp_path / "s1")
    stage2 = _train(2, str(train["mgrs"]), stage1, tmp_path / "s2")
    before, after1, after2 = (score_checkpoint(str(m), held_out) for m in (start, stage1, stage2))
    print(f"\nmIoU {before['miou']:.3f} → {after1['miou']:.3f} → {after2['miou']:.3f}; "
          f"region accuracy {before['region_accuracy']:.3f} → {after1['region_accuracy']:.3f} → "
          f"{after2['region_accuracy']:.3f} ({after2['regions']} regions)")
    assert after2["regions"] >= 30
    # dense features: each stage's checkpoint segments clearly better than the untrained start
    assert after1["miou"] >= before["miou"] + 0.04 and after2["miou"] >= before["miou"] + 0.04
    # region labelling: stage 2's region loss lifts it far above chance (1/7) and above the start
    assert after2["region_accuracy"] >= before["region_accuracy"] + 0.3 and after2["region_accuracy"] >= 0.5
