"""The training loop shared by both stages: start or resume, DDP, AMP, gradient clipping, the cosine
schedule, EMA teacher updates, logs and checkpoints.

A run writes into `out/`: `config.json` (the resolved settings), `log.jsonl` + `tensorboard/`,
`checkpoints/step_N.pt` + `latest.pt` (full training state, for resuming) and, when it finishes,
`{name}.pt` in the release layout (what `farslip segment --model` takes). Rerunning the same command
resumes from `checkpoints/latest.pt`; Ctrl-C (or SIGTERM) stops every rank after the same step and
saves it first (training/interrupt.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from engine.models.loader import build_from_state_dict, tokenizer_for
from training.batches import to_device
from training.checkpoints import (check_resume_fits, find_resume, load_training_state, save_atomic,
                                  save_checkpoint, training_state)
from training.config import TrainConfig
from training.distributed import World, barrier, mean_over_ranks
from training.interrupt import StopRequest
from training.loaders import check_data, epoch_data
from training.optim import Schedule, make_optimizer, restore_optimizer
from training.run_log import RunLog
from training.start import starting_network
from training.step import FarSLIPTrainer, Teacher, stage_losses

MAX_LOGIT_SCALE = math.log(100)


def _precision(cfg: TrainConfig, device: torch.device) -> str:
    if cfg.precision == "auto":
        return "amp" if device.type == "cuda" else "fp32"
    return cfg.precision


def _autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.float16 if precision == "amp" and device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


class Run:
    """Everything one training run holds; `train()` below drives it."""

    def __init__(self, cfg: TrainConfig, world: World, quiet: bool = False):
        self.world, self.quiet = world, quiet
        self.out = Path(cfg.out)
        source = check_data(cfg)
        if getattr(source, "note", None):  # stage 2's images found in global_imgs/: config.json records it
            cfg = dataclasses.replace(cfg, data_root=str(source.root))
            if world.main and not quiet:
                print(f"data: {source.note}", flush=True)
        for warning in getattr(source, "warnings", []) if world.main else []:  # (shown even when quiet)
            print(f"data: warning: {warning}", file=sys.stderr, flush=True)
        self.cfg = cfg
        resume = find_resume(self.out, cfg.resume)
        self.resumed = load_training_state(resume, cfg.stage) if resume else None
        if self.resumed is not None:
            check_resume_fits(cfg, self.resumed, resume)
        # the same seed on every rank while the network (and its teacher copy) is made, as published:
        # a random start is the same network everywhere; each rank's own seed after that
        torch.manual_seed(cfg.seed)
        if self.resumed is not None:
            self.arch = self.resumed["arch"]
            clip = build_from_state_dict(self.resumed["state_dict"], self.arch, source=str(resume))
        else:
            clip, self.arch = starting_network(cfg.model, cfg.arch, long_clip=cfg.long_clip)
        self.name = cfg.name or f"FarSLIP{cfg.stage}_{self.arch}"
        self.clip = clip.to(world.device).train()
        if self.clip.long_clip and cfg.long_clip_frozen_pe:
            # published `load_from_clip` (either stage): the stretched 248-position table stays as it is,
            # the residual table (positions 20-247 through mask2) trains
            self.clip.positional_embedding.requires_grad_(False)
        self.trainer = FarSLIPTrainer(self.clip, cfg.stage, teacher_grad=cfg.teacher_grad)
        self.module = self.trainer
        if world.size > 1:
            from torch.nn.parallel import DistributedDataParallel

            # wrapping broadcasts rank 0's weights: the teacher below is copied from those on every rank
            self.module = DistributedDataParallel(
                self.trainer, device_ids=[world.device.index] if world.device.type == "cuda" else None,
                find_unused_parameters=cfg.find_unused_parameters)
        self.teacher = Teacher(self.clip, cfg.teacher if cfg.stage == 1 else "active", cfg.ema_momentum)
        torch.manual_seed(cfg.seed + world.rank)
        self.precision = _precision(cfg, world.device)
        self.data = epoch_data(cfg, source, self.clip.input_size,
                               tokenizer_for(self.arch), int(self.clip.context_length), world.rank, world.size)
        self.total = self.data.steps * cfg.epochs
        if cfg.max_steps:
            self.total = min(self.total, cfg.max_steps)
        self.optimizer = make_optimizer(self.trainer, cfg)
        self.schedule = Schedule(cfg.lr, self.total, cfg.warmup)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "amp" and world.device.type == "cuda" else None
        self.step = 0
        if self.resumed is not None:
            self._restore(self.resumed)
        self.log = RunLog(self.out, world.main, cfg.tensorboard)

    def _restore(self, state: dict) -> None:
        try:
            restore_optimizer(self.optimizer, state["optimizer"])
        except ValueError:
            from engine.errors import InputError

            raise InputError("cannot resume: the checkpoint trained a different set of weights (a setting such as "
                             "recipe or long_clip_frozen_pe changed); use the same settings, or --resume never") from None
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.teacher.load_state_dict(state.get("teacher"))
        self.step = int(state["step"])
        rng = state.get("rng") or {}
        if "torch" in rng and self.world.size == 1:
            torch.set_rng_state(rng["torch"])

    def state(self, full: bool = True) -> dict:
        return training_state(clip=self.clip, arch=self.arch, name=self.name, epoch=self.step // self.data.steps,
                              step=self.step, config=self.cfg.as_dict(), optimizer=self.optimizer,
                              scaler=self.scaler, teacher_state=self.teacher.state_dict(),
                              full=full)

    def save(self) -> None:
        if self.world.main:
            save_checkpoint(self.state(), self.out, self.cfg.keep_checkpoints)

    def validate(self, epoch: int) -> None:
        """Zero-shot validation on the main rank (the others wait), logged with the step."""
        if self.world.main:
            from training.validate import zero_shot_validation

            record = {"step": self.step, "epoch": epoch,
                      **zero_shot_validation(self.clip, self.arch, self.cfg, self.out, self.world.device, self.step)}
            self.log.write(record)
            if not self.quiet:
                print(f"validation after epoch {epoch + 1}: top-1 {record['val/top1']:.2f}%  "
                      f"top-5 {record['val/top5']:.2f}%  ({record['val/images']} images)", flush=True)
        from training.distributed import barrier

        barrier(self.world)

    def train_step(self, batch: dict) -> dict[str, float]:
        cfg = self.cfg
        self.last_lr = self.schedule.apply(self.optimizer, self.step)  # the rate this step uses
        batch = to_device(batch, self.world.device)
        with _autocast(self.precision, self.world.device):
            features = self.module(batch, self.teacher.model)
        losses = stage_losses(features, batch, cfg)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(losses["total"]).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            losses["total"].backward()
        self.teacher.update(self.clip)  # an EMA teacher takes the weights this step used, as the published code
        grad_norm = None
        if cfg.grad_clip > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.trainer.parameters(), cfg.grad_clip))
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        with torch.no_grad():
            self.clip.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        self.step += 1
        values = {f"loss/{k}": float(v.detach()) for k, v in losses.items()}
        if grad_norm is not None:
            values["grad_norm"] = grad_norm
        return values


def train(cfg: TrainConfig, world: World, quiet: bool = False, on_step: Callable[[int], None] | None = None) -> dict:
    """Run (or resume) training to the end; returns the final record (also the last line of log.jsonl).
    `on_step(step)` is called after each optimiser step (a KeyboardInterrupt raised there, like Ctrl-C,
    saves the step and stops). Ctrl-C or SIGTERM stops all ranks after the same step, saves it and
    raises KeyboardInterrupt."""
    if cfg.val_data:  # checked before the model loads, not after the first epoch
        from training.validate import check_validation_data

        check_validation_data(cfg)
    run = Run(cfg, world, quiet)
    cfg = run.cfg
    if world.main:
        run.out.mkdir(parents=True, exist_ok=True)
        (run.out / "config.json").write_text(json.dumps(cfg.as_dict(), indent=2), encoding="utf-8")
    images_per_step = cfg.batch_size * world.size
    record: dict = {"step": run.step}
    window_start, window_steps, sums = time.perf_counter(), 0, {}
    started = time.perf_counter()
    stop = StopRequest(world)
    try:
        stop.__enter__()
        for epoch in range(run.step // run.data.steps, cfg.epochs):
            if run.step >= run.total:
                break
            first = run.step - epoch * run.data.steps
            for batch in run.data.batches(epoch, first):
                values = run.train_step(batch)
                window_steps += 1
                for k, v in values.items():
                    sums[k] = sums.get(k, 0.0) + v
                if run.step % cfg.log_every == 0 or run.step == run.total:
                    elapsed = time.perf_counter() - window_start
                    means = mean_over_ranks({k: v / window_steps for k, v in sums.items()}, world)
                    record = {"step": run.step, "epoch": epoch, "lr": run.last_lr, **means,
                              "logit_scale": float(run.clip.logit_scale.detach().exp()),
                              "images_per_s": images_per_step * window_steps / max(elapsed, 1e-9),
                              "samples_seen": run.step * images_per_step}
                    if world.device.type == "cuda":
                        record["max_memory_gb"] = torch.cuda.max_memory_allocated(world.device) / 2 ** 30
                    run.log.write(record)
                    if not quiet and world.main:
                        print(f"step {run.step}/{run.total}  loss {record['loss/total']:.4f}  "
                              f"lr {record['lr']:.3g}  {record['images_per_s']:.1f} img/s", flush=True)
                    window_start, window_steps, sums = time.perf_counter(), 0, {}
                if cfg.save_every and run.step % cfg.save_every == 0:
                    run.save()
                if on_step is not None:
                    on_step(run.step)
                if stop.agreed():
                    raise KeyboardInterrupt
                if run.step >= run.total:
                    break
            run.save()
            if cfg.val_data and (run.step % run.data.steps == 0 or run.step >= run.total) \
                    and (epoch + 1) % cfg.val_every == 0:
                run.validate(epoch)
    except KeyboardInterrupt:
        run.save()
        barrier(world)  # no rank exits (and makes torchrun stop the others) before the main rank saved
        raise
    finally:
        stop.__exit__()
        run.log.close()
    final = run.out / f"{run.name}.pt"
    if world.main:
        save_atomic(run.state(full=False), final)
    record.update(checkpoint=str(final), seconds=round(time.perf_counter() - started, 3))
    return record
