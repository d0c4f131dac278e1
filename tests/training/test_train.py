"""`python -m training.train` on synthetic scenes with a tiny network: settings, checkpoints the engine
serves, logs, resuming, teachers, Long-CLIP, AMP and clean errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.errors import InputError
from engine.models import checkpoint, load_model
from tests.engine.conftest import TINY, make_clip
from training.config import build_config
from training.distributed import World
from training.loop import train
from training.optim import cosine_with_warmup

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    """A starting checkpoint in the release layout ({"epoch", "name", "state_dict", "optimizer"})."""
    path = tmp_path_factory.mktemp("start") / "start.pt"
    torch.save({"epoch": 0, "name": "start", "state_dict": {f"module.{k}": v for k, v in make_clip().state_dict().items()},
                "optimizer": {}}, path)
    return path


def _config(stage, scene_dataset, start, out, **extra):
    data = (str(scene_dataset["shards"] / "{0000..0001}.tar") if stage == 1 else str(scene_dataset["mgrs"]))
    settings = dict(data=data, model=str(start), out=str(out), batch_size=4, lr=1e-4, warmup=2, workers=0,
                    log_every=1, min_box=8, tensorboard=True)
    settings.update(extra)
    return build_config(stage, overrides=settings)


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_stage_defaults_file_and_overrides(tmp_path):
    assert build_config(1, overrides={"data": "x"}).lr == 1e-6
    two = build_config(2, overrides={"data": "x"})
    assert (two.lr, two.warmup, two.epochs, two.region_weight, two.max_boxes) == (4e-9, 250, 10, 1.0, 4)
    (tmp_path / "a.yaml").write_text("stage: 2\nlr: 1.0e-5\nteacher: ema\ncrop_scale: [0.2, 0.5]\n")
    (tmp_path / "a.toml").write_text('stage = 1\nlr = 2e-5\nlong_clip = true\n')
    cfg = build_config(None, str(tmp_path / "a.yaml"), {"data": "x", "warmup": "7"})
    assert (cfg.stage, cfg.lr, cfg.teacher, cfg.crop_scale, cfg.warmup) == (2, 1e-5, "ema", (0.2, 0.5), 7)
    cfg = build_config(None, str(tmp_path / "a.toml"), {"data": "x", "lr": 3e-5})
    assert (cfg.stage, cfg.lr, cfg.long_clip) == (1, 3e-5, True)
    for bad in ({"teacher": "nobody"}, {"lr": "fast"}, {"batch_size": 0}, {"colour": "red"}):
        with pytest.raises(InputError):
            build_config(1, overrides={"data": "x", **bad})


def test_cosine_schedule_warms_up_then_decays_to_zero():
    factors = [cosine_with_warmup(t, 100, 10) for t in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(factors[:9], factors[1:10]))
    assert all(a >= b for a, b in zip(factors[9:], factors[10:]))
    assert cosine_with_warmup(100, 100, 10) == pytest.approx(0.0)
    assert factors[55] == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))


@pytest.mark.parametrize("stage", [1, 2])
def test_a_run_writes_a_checkpoint_the_engine_serves_and_logs_every_loss(stage, scene_dataset, start, tmp_path):
    out = tmp_path / "run"
    record = train(_config(stage, scene_dataset, start, out, max_steps=3), World())
    final = Path(record["checkpoint"])
    assert final.name == f"FarSLIP{stage}_{TINY}.pt"
    saved = torch.load(final, weights_only=True)
    assert saved["config"]["stage"] == stage and saved["arch"] == TINY and saved["step"] == 3
    model = load_model(str(final), device="cpu")  # architecture recognised from the shapes
    assert model.arch == TINY
    changed = [k for k, v in make_clip().state_dict().items() if not torch.equal(v, saved["state_dict"][k])]
    assert len(changed) > 10  # it trained
    log = _log(out)
    assert [r["step"] for r in log] == [1, 2, 3]
    losses = {"global", "distill", "total"} if stage == 1 else {"global", "region", "total"}
    for r in log:
        assert {f"loss/{k}" for k in losses} <= r.keys() and r["images_per_s"] > 0
        assert all(math.isfinite(r[f"loss/{k}"]) for k in losses)
    assert log[0]["lr"] < log[1]["lr"]  # warm-up
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert json.loads((out / "config.json").read_text())["stage"] == stage
    scene = sorted(scene_dataset["geotiff"].glob("scene?????.tif"))[0]
    segment = subprocess.run([sys.executable, "-m", "engine.cli", "segment", str(scene), "--classes", "water; road",
                              "--model", str(final), "-o", str(tmp_path / "seg"), "--device", "cpu", "-q"],
                             capture_output=True, text=True, cwd=REPO)
    assert segment.returncode == 0, segment.stderr
    assert (tmp_path / "seg" / "scene00000_classes.tif").is_file()


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(scene_dataset, start, tmp_path):
    straight = train(_config(2, scene_dataset, start, tmp_path / "a", max_steps=6, save_every=3), World())
    def ctrl_c_at_step_3(step):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_config(2, scene_dataset, start, tmp_path / "b", max_steps=6), World(), on_step=ctrl_c_at_step_3)
    assert torch.load(tmp_path / "b" / "checkpoints" / "latest.pt", weights_only=True)["step"] == 3
    assert not (tmp_path / "b" / f"FarSLIP2_{TINY}.pt").exists()
    resumed = train(_config(2, scene_dataset, start, tmp_path / "b", max_steps=6), World())
    assert [r["step"] for r in _log(tmp_path / "b")] == [1, 2, 3, 4, 5, 6]  # steps 4-6 only ran once
    a = torch.load(straight["checkpoint"], weights_only=True)["state_dict"]
    b = torch.load(resumed["checkpoint"], weights_only=True)["state_dict"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-7, msg=key)


def test_a_resumed_run_follows_the_current_learning_rate_and_step_total(scene_dataset, start, tmp_path):
    """3 steps under --max-steps 3, then the same run resumed without it and with another --lr: each
    resumed step uses the rate an uninterrupted run with the new settings uses at that step (it used
    the interrupted run's stale rate: 0 at step 4)."""
    settings = dict(epochs=2, warmup=2)
    train(_config(2, scene_dataset, start, tmp_path / "b", max_steps=3, lr=1e-4, **settings), World())
    resumed = train(_config(2, scene_dataset, start, tmp_path / "b", lr=3e-4, **settings), World())
    fresh = train(_config(2, scene_dataset, start, tmp_path / "a", lr=3e-4, **settings), World())
    assert resumed["step"] == fresh["step"] > 4  # the new step total: both epochs
    rates = {r["step"]: r["lr"] for r in _log(tmp_path / "b")}
    want = {r["step"]: r["lr"] for r in _log(tmp_path / "a")}
    assert all(rates[step] > 0 for step in range(4, fresh["step"]))
    for step in range(4, fresh["step"] + 1):
        assert rates[step] == pytest.approx(want[step], rel=1e-12, abs=0), step
    assert json.loads((tmp_path / "b" / "config.json").read_text())["lr"] == 3e-4


def test_the_final_model_is_refused_as_resume_in_one_line_naming_model(scene_dataset, start, tmp_path):
    record = train(_config(2, scene_dataset, start, tmp_path / "a", max_steps=1), World())
    with pytest.raises(InputError, match="pass this file as --model") as err:
        train(_config(2, scene_dataset, start, tmp_path / "b", max_steps=2, resume=record["checkpoint"]), World())
    assert "\n" not in str(err.value)
    again = train(_config(2, scene_dataset, start, tmp_path / "c", max_steps=1, model=record["checkpoint"]), World())
    assert Path(again["checkpoint"]).is_file()  # as --model it starts a new run


def test_a_resume_that_asks_for_another_network_is_refused(scene_dataset, start, tmp_path):
    """Resuming with another --model architecture or with long_clip on a 77-position network trained the
    checkpoint's network while config.json recorded the settings asked for; now one line, nothing changed."""
    out = tmp_path / "run"
    train(_config(2, scene_dataset, start, out, max_steps=1, save_every=1), World())
    for change, needle in ((dict(model="random:tiny-vit-32"), "it trains tiny-vit-16, this run asks for tiny-vit-32"),
                           (dict(long_clip=True), "this run asks for long_clip")):
        with pytest.raises(InputError, match=needle):
            train(_config(2, scene_dataset, start, out, max_steps=2, **change), World())
    assert json.loads((out / "config.json").read_text())["model"] == str(start)


def test_teacher_modes(scene_dataset, start, tmp_path):
    from training.loop import Run

    frozen = Run(_config(1, scene_dataset, start, tmp_path / "f", teacher="frozen", global_weight=0.0, max_steps=2),
                 World())
    ema = Run(_config(1, scene_dataset, start, tmp_path / "e", teacher="ema", ema_momentum=0.9, max_steps=3), World())
    for run in (frozen, ema):
        run.train_step(next(iter(run.data.batches(0, 0))))
    for k, v in frozen.teacher.model.state_dict().items():
        assert torch.equal(v, make_clip().state_dict()[k])
    # the EMA takes the weights a step uses, before its update (as the published train.py): after one step
    # the teacher is still the start; after the second, it has moved a tenth of the way to the first step's
    before = {k: v.clone() for k, v in ema.teacher.model.named_parameters()}
    student = {k: v.detach().clone() for k, v in ema.clip.named_parameters()}
    start_weights = make_clip().state_dict()
    for k, t in before.items():  # (a step moves weights by about lr = 1e-4: far more than the tolerance)
        torch.testing.assert_close(t, start_weights[k], rtol=1e-6, atol=1e-7)
    ema.train_step(next(iter(ema.data.batches(0, 0))))
    for name, t in ema.teacher.model.named_parameters():
        torch.testing.assert_close(t, 0.9 * before[name] + 0.1 * student[name], rtol=1e-6, atol=1e-7)
    assert Run(_config(1, scene_dataset, start, tmp_path / "a", max_steps=1), World()).teacher.model is None
    with pytest.raises(InputError, match="teacher 'frozen' cannot be used with the global contrastive loss"):
        _config(1, scene_dataset, start, tmp_path / "g", teacher="frozen", max_steps=1).validate()


@pytest.mark.parametrize("stage", [1, 2])
def test_long_clip_positions_from_a_77_position_start_in_either_stage(stage, scene_dataset, start, tmp_path):
    """The published main.py applies Long-CLIP positions in either stage (stage 1 used to ignore it)."""
    record = train(_config(stage, scene_dataset, start, tmp_path / "l", max_steps=1, long_clip=True, lr=0.0),
                   World())
    state = checkpoint.read_state_dict(record["checkpoint"])
    assert checkpoint.is_long_clip(state) and state["positional_embedding"].shape[0] == 248
    original = make_clip().positional_embedding.detach()
    torch.testing.assert_close(state["positional_embedding"][:20], original[:20])
    model = load_model(record["checkpoint"], device="cpu")
    assert model.long_clip and model.context_length == 248


def test_mixed_precision_on_cpu_trains(scene_dataset, start, tmp_path):
    train(_config(1, scene_dataset, start, tmp_path / "amp", max_steps=2, precision="amp_bf16", grad_clip=1.0),
          World())
    log = _log(tmp_path / "amp")
    assert all(math.isfinite(r["loss/total"]) for r in log) and all(r["grad_norm"] > 0 for r in log)


@pytest.mark.parametrize("args, message", [
    (["--stage", "2", "--data", "missing/text_info.json"], "cannot read"),
    (["--stage", "1", "--data", "gone/{0000..0003}.tar"], "4 shard(s) not found"),
    (["--stage", "1", "--data", "x.tar", "--set", "teacher=maybe"], "teacher"),
    (["--stage", "1", "--data", "x.tar", "--set", "nonsense"], "key=value"),
    (["--stage", "2", "--data", "SCENES", "--model", "random:ViT-Q-99"], "unknown architecture"),
    (["--stage", "2", "--data", "SCENES", "--model", "no/such.pt"], "unknown model"),
])
def test_bad_settings_end_with_one_line(args, message, scene_dataset, tmp_path):
    args = [str(scene_dataset["mgrs"]) if a == "SCENES" else a for a in args]
    result = subprocess.run([sys.executable, "-m", "training.train", *args, "-o", str(tmp_path / "o"), "-q"],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_a_missing_image_mid_run_ends_with_one_line(scene_dataset, tmp_path):
    import shutil

    data = tmp_path / "mgrs"
    shutil.copytree(scene_dataset["mgrs"].parent, data)
    last = json.loads((data / "text_info.json").read_text())[-1]["global_filepath"]
    (data / last).unlink()  # not the first record's image: that one is checked before training starts
    result = subprocess.run([sys.executable, "-m", "training.train", "--stage", "2", "--data", str(data / "text_info.json"),
                             "--model", f"random:{TINY}", "--batch-size", "4", "--workers", "1", "--set", "min_box=8",
                             "-o", str(tmp_path / "o"), "-q"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot read image" in lines[0], result.stderr


@pytest.mark.parametrize("stage", [1, 2])
def test_torchrun_with_two_cpu_processes(stage, scene_dataset, start, tmp_path):
    """The documented launch: `torchrun --nproc_per_node=2 -m training.train` (gloo on CPU)."""
    import socket

    data = str(scene_dataset["shards"] / "{0000..0001}.tar") if stage == 1 else str(scene_dataset["mgrs"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                             f"--master_port={port}",
                             "-m", "training.train", "--stage", str(stage), "--data", data, "--model", str(start),
                             "--batch-size", "2", "--workers", "0", "--max-steps", "2", "--device", "cpu",
                             "--set", "min_box=8", "--set", "log_every=1", "-o", str(tmp_path / "o"), "-q"],
                            capture_output=True, text=True, cwd=REPO, timeout=600,
                            env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    log = _log(tmp_path / "o")
    assert [r["step"] for r in log] == [1, 2] and log[-1]["samples_seen"] == 2 * 2 * 2  # 2 steps × 2 ranks × 2
    assert load_model(str(tmp_path / "o" / f"FarSLIP{stage}_{TINY}.pt"), device="cpu").arch == TINY


def test_stage_2_is_never_resumed_from_a_stage_1_checkpoint(scene_dataset, start, tmp_path):
    """A stage-1 run's checkpoint given as --resume to stage 2 used to be taken as is: the step counter
    carried over (stage 2 trained only the steps stage 1 had not) and the result was filed as stage 2."""
    from engine.errors import InputError

    train(_config(1, scene_dataset, start, tmp_path / "one", max_steps=2, save_every=2), World())
    latest = tmp_path / "one" / "checkpoints" / "latest.pt"
    with pytest.raises(InputError, match="cannot resume stage 2 from .*: a stage-1 checkpoint .*pass it as --model"):
        train(_config(2, scene_dataset, start, tmp_path / "two", max_steps=2, resume=str(latest)), World())
    assert not (tmp_path / "two" / f"FarSLIP2_{TINY}.pt").exists()
    notes = tmp_path / "notes.pt"
    notes.write_text("filepath,caption\n")
    with pytest.raises(InputError) as err:
        train(_config(2, scene_dataset, start, tmp_path / "three", max_steps=2, resume=str(notes)), World())
    assert "weights_only" not in str(err.value) and "\n" not in str(err.value)
