"""Training throughput (images/s) and memory of one training step, stage 1 and stage 2.

    .venv/bin/python benchmarks/train_benchmark.py                       # CPU: tiny-vit-16, batch 8
    .venv/bin/python benchmarks/train_benchmark.py --arch ViT-B-16 --batch 40 --device cuda   # the paper's setting
    .venv/bin/python benchmarks/train_benchmark.py --recipe revised                            # detached teacher, ...

Batches are built once from synthetic scenes (the data pipeline is not timed: it runs in parallel
workers in a real run); each step is the full step of `training.loop.Run` — forward, losses, backward,
clipping, AdamW, schedule and teacher update — under the chosen recipe (published: stage 1's active
teacher carries gradient, so its crops are part of the backward pass). At least as many scenes as the
batch are written, so that one batch fits the dataset. Memory: peak CUDA allocation on a GPU, peak process RSS
on a CPU.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.batches import Collate, Stage1Sample, Stage2Samples, augmentation  # noqa: E402
from training.config import build_config  # noqa: E402
from training.data.readers import MGRSDataset  # noqa: E402
from training.data.synthetic import write_scene_dataset  # noqa: E402
from training.distributed import World  # noqa: E402
from training.loop import Run  # noqa: E402


def _batch(stage: int, run: Run, data: Path, batch: int) -> dict:
    size = run.clip.input_size
    records = MGRSDataset(data / "mgrs" / "text_info.json", max_boxes=4, min_size=8)
    if stage == 1:
        make = Stage1Sample(size, 4, (0.3, 0.7), (3 / 4, 4 / 3))
        samples = [make((records[i % len(records)]["image"], records[i % len(records)]["caption"])) for i in range(batch)]
    else:
        samples2 = Stage2Samples(records, size, augmentation(run.cfg), run.cfg.own_caption)
        samples = [samples2[i % len(records)] for i in range(batch)]
    from engine.models.loader import tokenizer_for

    return Collate(stage, tokenizer_for(run.arch), int(run.clip.context_length), 4)(samples)


def measure(stage: int, arch: str, batch: int, steps: int, device: str, data: Path, out: Path,
            recipe: str = "published") -> dict:
    shards = str(data / "shards" / "{0000..0001}.tar")
    cfg = build_config(stage, overrides=dict(data=shards if stage == 1 else str(data / "mgrs" / "text_info.json"),
                                             model=f"random:{arch}", out=str(out / f"s{stage}"), batch_size=batch,
                                             lr=1e-5, warmup=1, workers=0, min_box=8, tensorboard=False,
                                             grad_clip=1.0, samples=10 ** 6, recipe=recipe))
    world = World(device=torch.device(device))
    run = Run(cfg, world)
    prepared = _batch(stage, run, data, batch)
    run.train_step(prepared)  # warm-up (allocations, kernels)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        run.train_step(prepared)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    memory = (torch.cuda.max_memory_allocated() / 2 ** 30 if device.startswith("cuda")
              else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20)
    return {"stage": stage, "arch": arch, "batch": batch, "recipe": recipe, "device": device,
            "precision": run.precision,
            "images_per_s": round(batch * steps / seconds, 2), "s_per_step": round(seconds / steps, 3),
            "memory_gb": round(memory, 2), "memory_kind": "peak CUDA allocation" if device.startswith("cuda")
            else "peak process RSS"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="tiny-vit-16")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--recipe", choices=("published", "revised"), default="published")
    p.add_argument("--stage", type=int, choices=(1, 2), help="only this stage (default: both)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_scene_dataset(data, max(16, args.batch), size=224, seed=0)
        for stage in (args.stage,) if args.stage else (1, 2):
            print(json.dumps(measure(stage, args.arch, args.batch, args.steps, args.device, data, Path(tmp),
                                     args.recipe)), flush=True)


if __name__ == "__main__":
    main()
