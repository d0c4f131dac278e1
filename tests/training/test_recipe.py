"""The `published` recipe reproduces the published training code's effective settings (held against a
table read off NJU-LHRS/FarSLIP: its README commands over `open_clip_train/config.py`), and each
published behaviour it switches on is really what a run does: the active teacher's gradient, the
frozen stretched Long-CLIP table, colour augmentation of the image and every object crop, objects
with their own caption left out; stage 1 on RS5M's own shard layout and on `farslip data shards`."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.engine.conftest import TINY, make_clip
from training.config import build_config
from training.distributed import World

REPO = Path(__file__).resolve().parents[2]

# The published values (None: the stage has no such loss/setting).
PUBLISHED = {
    1: dict(lr=1e-6, wd=1.0, batch_size=40, epochs=1, warmup=1000, distill_weight=0.1, region_weight=None,
            global_weight=1.0, teacher="active", teacher_grad=True, gather_with_grad=False, max_boxes=4,
            crop_scale=[0.3, 0.7], crop_ratio=[3 / 4, 4 / 3], shuffle_buffer=5000, shard_shuffle=True,
            long_clip=False, long_clip_frozen_pe=True, color_jitter=None, color_jitter_p=0.0, grayscale_p=0.0,
            model="openai:ViT-B-16", betas=[0.9, 0.98], eps=1e-6, seed=0),
    2: dict(lr=4e-9, wd=1.0, batch_size=40, epochs=10, warmup=250, distill_weight=None, region_weight=1.0,
            global_weight=1.0, teacher=None, teacher_grad=None, gather_with_grad=False, max_boxes=4,
            crop_scale=None, crop_ratio=None, shuffle_buffer=None, long_clip=False, long_clip_frozen_pe=True,
            color_jitter=[0.4, 0.4, 0.2, 0.1], color_jitter_p=0.8, grayscale_p=0.2, min_box=64, max_box=1024,
            multi_positive=True, own_caption="exclude", model="openai:ViT-B-16", betas=[0.9, 0.98], eps=1e-6),
}


@pytest.mark.parametrize("stage", [1, 2])
def test_print_config_is_the_published_table(stage):
    result = subprocess.run([sys.executable, "-m", "training.train", "--stage", str(stage), "--print-config"],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.strip().splitlines()
    printed = json.loads(line)
    assert printed["recipe"] == "published" and printed["stage"] == stage
    for key, want in PUBLISHED[stage].items():
        got = printed[key]
        if isinstance(want, (float, list)):
            assert got == pytest.approx(want), key
        else:
            assert got == want and type(got) is type(want), key


def test_revised_recipe_and_overrides():
    from training.config import effective_settings

    revised = effective_settings(build_config(1, overrides={"recipe": "revised"}, need_data=False))
    assert (revised["teacher_grad"], revised["gather_with_grad"], revised["long_clip_frozen_pe"]) == (False, True, False)
    two = effective_settings(build_config(2, overrides={"recipe": "revised", "gather_with_grad": "false"}, need_data=False))
    assert two["own_caption"] == "keep" and two["gather_with_grad"] is False  # a flag beats the recipe
    assert effective_settings(build_config(1, overrides={"teacher": "ema"}, need_data=False))["teacher_grad"] is False


def test_active_teacher_features_keep_their_gradient_unless_revised(scene_dataset):
    from engine.models.loader import tokenizer_for
    from training.batches import Collate, Stage1Sample
    from training.data.readers import MGRSDataset
    from training.step import FarSLIPTrainer

    records = MGRSDataset(scene_dataset["mgrs"], min_size=8)
    make = Stage1Sample(224, 2, (0.3, 0.7), (3 / 4, 4 / 3))
    batch = Collate(1, tokenizer_for(TINY), 77, 2)([make((records[i]["image"], records[i]["caption"])) for i in range(2)])
    clip = make_clip().train()
    assert FarSLIPTrainer(clip, 1, teacher_grad=True)(batch)["teacher"].requires_grad
    assert not FarSLIPTrainer(clip, 1, teacher_grad=False)(batch)["teacher"].requires_grad


def _config(stage, data, out, **extra):
    settings = dict(data=data, model=f"random:{TINY}", out=str(out), batch_size=2, lr=1e-3, warmup=1, workers=0,
                    log_every=1, min_box=8, tensorboard=False)
    settings.update(extra)
    return build_config(stage, overrides=settings)


@pytest.mark.parametrize("stage, recipe, trains_stretched", [(2, "published", False), (2, "revised", True),
                                                             (1, "published", False)])
def test_long_clip_stretched_table_frozen_as_published(stage, recipe, trains_stretched, scene_dataset, tmp_path):
    from training.loop import Run

    data = str(scene_dataset["mgrs"]) if stage == 2 else str(scene_dataset["shards"] / "{0000..0001}.tar")
    run = Run(_config(stage, data, tmp_path / recipe, long_clip=True, recipe=recipe, samples=16), World())
    before = {k: run.clip.state_dict()[k].clone() for k in ("positional_embedding", "positional_embedding_res")}
    run.train_step(next(iter(run.data.batches(0, 0))))
    after = run.clip.state_dict()
    assert not torch.equal(before["positional_embedding_res"], after["positional_embedding_res"])
    assert torch.equal(before["positional_embedding"], after["positional_embedding"]) != trains_stretched


def _rgb(seed):
    return np.random.default_rng(seed).integers(0, 255, (96, 96, 3), dtype=np.uint8)


def test_augmentation_of_the_image_and_every_crop_is_drawn_per_sample(scene_dataset):
    from PIL import Image

    from training.batches import Augment, Stage2Samples, augmentation
    from training.data.readers import MGRSDataset

    gray = Augment((0.4, 0.4, 0.2, 0.1), 0.0, 1.0)(Image.fromarray(_rgb(0)))
    assert np.ptp(np.asarray(gray, dtype=int), axis=2).max() == 0  # RandomGrayscale p 1: R = G = B
    cfg = build_config(2, need_data=False)
    assert augmentation(build_config(1, need_data=False)) is None  # stage 1: resize only, as published
    plain = Stage2Samples(MGRSDataset(scene_dataset["mgrs"], min_size=8), 224)
    jittered = Stage2Samples(MGRSDataset(scene_dataset["mgrs"], min_size=8), 224, augmentation(cfg))
    i = next(i for i in range(len(plain)) if plain[i]["crops"])
    a, b, again = plain[i], jittered[i], jittered[i]
    assert torch.equal(b["image"], again["image"])  # drawn from (seed, epoch, index): resumable
    differ = [not torch.equal(x, y) for x, y in zip([a["image"], *a["crops"]], [b["image"], *b["crops"]])]
    changed = [not torch.equal(x, y) for x, y in zip([jittered[j]["image"] for j in range(8)],
                                                      [plain[j]["image"] for j in range(8)])]
    assert any(differ) and 4 <= sum(changed) <= 8  # p(jitter or gray) = 1 - 0.2·0.8 = 0.84


def test_objects_with_their_own_caption_are_left_out(scene_dataset, tmp_path):
    from engine.models.loader import tokenizer_for
    from training.batches import Collate, Stage2Samples
    from training.data.readers import MGRSDataset

    records = json.loads(Path(scene_dataset["mgrs"]).read_text())
    for r in records:
        for s in r["segment"]:
            s["cap"] = f"a lone {s['category']}"
    path = tmp_path / "text_info.json"
    path.write_text(json.dumps(records))
    for folder in ("images",):
        (tmp_path / folder).symlink_to(Path(scene_dataset["mgrs"]).parent / folder)
    collate = Collate(2, tokenizer_for(TINY), 77, 4)
    for own, kept in (("exclude", 0), ("keep", None)):
        samples = Stage2Samples(MGRSDataset(path, min_size=8), 224, own_caption=own)
        batch = collate([samples[i] for i in range(4)])
        objects = sum(min(len(samples[i]["crops"]), 4) for i in range(4))
        assert int(batch["valid"].sum()) == (objects if kept is None else kept)
        assert len(batch["crops"]) == int(batch["valid"].sum())


def _rs5m_shards(folder: Path, mgrs: Path) -> str:
    """The synthetic scenes re-packed in RS5M's own layout (img_content, img_name, caption)."""
    records = json.loads(mgrs.read_text())
    folder.mkdir()
    for shard in range(2):
        with tarfile.open(folder / f"rs3-train-{shard:04d}.tar", "w") as tar:
            for n, r in enumerate(records[shard::2]):
                image = (mgrs.parent / r["global_filepath"]).read_bytes()
                for ext, payload in (("img_content", image), ("img_name", r["global_filepath"].encode()),
                                     ("caption", r["global_caption"].encode())):
                    info = tarfile.TarInfo(f"{shard}_{n:05d}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return str(folder / "rs3-train-{0000..0001}.tar")


def test_stage_1_trains_on_rs5m_shards_and_on_farslip_data_shards(scene_dataset, tmp_path):
    from training.data.shards import write_shards
    from training.loop import train

    mgrs = Path(scene_dataset["mgrs"])
    rs5m = _rs5m_shards(tmp_path / "rs5m", mgrs)
    with open(tmp_path / "captions.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["filepath", "caption"])
        writer.writerows((r["global_filepath"], r["global_caption"]) for r in json.loads(mgrs.read_text()))
    made = write_shards(mgrs.parent, tmp_path / "captions.csv", tmp_path / "made", per_shard=8)
    for name, spec, samples in (("rs5m", rs5m, 16), ("made", made["spec"], 0)):
        record = train(_config(1, spec, tmp_path / f"run-{name}", max_steps=2, samples=samples), World(), quiet=True)
        log = [json.loads(line) for line in (tmp_path / f"run-{name}" / "log.jsonl").read_text().splitlines()]
        assert [r["step"] for r in log] == [1, 2] and all(np.isfinite(r["loss/total"]) for r in log)
        assert Path(record["checkpoint"]).is_file()


def test_zero_shot_validation_after_each_epoch(scene_dataset, tmp_path):
    from training.loop import train

    mgrs = Path(scene_dataset["mgrs"])
    records = json.loads(mgrs.read_text())
    with open(tmp_path / "val.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["filepath", "label", "title"])
        writer.writerows((mgrs.parent / r["global_filepath"], ("water", "forest", "road")[i % 3], r["brief_caption"])
                         for i, r in enumerate(records[:6]))
    cfg = _config(2, str(mgrs), tmp_path / "run", batch_size=8, epochs=2, val_data=str(tmp_path / "val.csv"))
    train(cfg, World(), quiet=True)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    val = [r for r in log if "val/top1" in r]
    assert [(r["step"], r["epoch"]) for r in val] == [(2, 0), (4, 1)]  # 16 records / 8 = 2 steps an epoch
    assert all(0 <= r["val/top1"] <= 100 and r["val/images"] == 6 and 0 <= r["val/i2t_mean_recall"] <= 100
               for r in val)
    assert (tmp_path / "run" / "val_classnames.txt").read_text().split() == ["forest", "road", "water"]


def test_long_messages_are_cut_at_a_word():
    from training.start import shorten

    assert shorten("word " * 50, 20) == "word word word word …"
    assert shorten("short message") == "short message"


def test_ctrl_c_under_torchrun_saves_and_ends_in_one_line(scene_dataset, tmp_path):
    """Ctrl-C in a terminal sends SIGINT to the launcher and both training processes: each saves its
    step, and `python -m training.torchrun` ends with one line, no traceback, exit status 130."""
    import os
    import signal
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "o"
    proc = subprocess.Popen([sys.executable, "-m", "training.torchrun", "--nproc_per_node=2", f"--master_port={port}",
                             "-m", "training.train", "--stage", "2", "--data", str(scene_dataset["mgrs"]),
                             "--model", f"random:{TINY}", "--batch-size", "2", "--workers", "0", "--epochs", "50",
                             "--device", "cpu", "--set", "min_box=8", "--set", "log_every=1", "-o", str(out), "-q"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 300
        while not (out / "log.jsonl").is_file() or not (out / "log.jsonl").read_text().strip():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-2000:]
            time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)  # what the terminal does: the whole foreground group
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "SignalException" not in stderr, stderr[-3000:]
    assert "interrupted" in stderr.strip().splitlines()[-1]
    assert torch.load(out / "checkpoints" / "latest.pt", weights_only=True)["step"] >= 1
