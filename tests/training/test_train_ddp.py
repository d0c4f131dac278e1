"""The real training step under DDP: two gloo processes, each holding half of the global batch, give the
losses and parameter gradients of one process on the whole batch — for stage 1 (contrastive +
patch-to-patch distillation, the active teacher with gradient) and stage 2 (contrastive + region
alignment, with the two ranks holding different numbers of objects), for both contrastive gathers:

    gather_with_grad=True    exactly the single-process gradient
    gather_with_grad=False   (published, open_clip's) the single-process loss values; the gradient is the
                             mean over ranks r of the single-process gradient with the contrastive
                             loss's features of every other rank detached
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from engine.models.loader import tokenizer_for
from tests.engine.conftest import TINY, make_clip
from training.batches import Collate, Stage1Sample, Stage2Samples
from training.config import TrainConfig
from training.data.readers import MGRSDataset
from training.step import FarSLIPTrainer, stage_losses

GLOBAL_BATCH = 4
MAX_BOXES = 12  # object slots per image (more than most scenes hold, so ranks differ)


def _samples(stage: int, data: str) -> list[dict]:
    torch.manual_seed(3)
    if stage == 1:
        records = MGRSDataset(data, max_boxes=4, min_size=8)
        make = Stage1Sample(224, 4, (0.3, 0.7), (3 / 4, 4 / 3))
        return [make((records[i]["image"], records[i]["caption"])) for i in range(GLOBAL_BATCH)]
    samples = Stage2Samples(MGRSDataset(data, max_boxes=MAX_BOXES, min_size=8), 224)
    return [samples[i] for i in range(GLOBAL_BATCH)]


def _step(stage: int, samples: list[dict], gather_with_grad: bool, world: int = 2):
    """Loss values and gradients of one step (the module DDP-wrapped when a process group exists; in one
    process, the reference that DDP with `world` ranks must reproduce)."""
    cfg = TrainConfig(stage=stage, data="-", max_boxes=MAX_BOXES, gather_with_grad=gather_with_grad)
    trainer = FarSLIPTrainer(make_clip(TINY, seed=5).train(), stage, teacher_grad=True)
    module = torch.nn.parallel.DistributedDataParallel(trainer) if dist.is_initialized() else trainer
    batch = Collate(stage, tokenizer_for(TINY), 77, cfg.max_boxes)(samples)
    features = module(batch)
    losses = stage_losses(features, batch, cfg)
    total = losses["total"]
    if not gather_with_grad and not dist.is_initialized():
        rows = len(features["image"]) // world
        shares = []
        for r in range(world):
            live = torch.zeros(len(features["image"]), 1, dtype=torch.bool)
            live[r * rows:(r + 1) * rows] = True
            f = {**features, **{k: torch.where(live, features[k], features[k].detach()) for k in ("image", "text")}}
            shares.append(stage_losses(f, batch, cfg)["global"])
        total = total + cfg.global_weight * (sum(shares) / world - losses["global"])
    total.backward()
    values = torch.stack([losses[k].detach() for k in sorted(losses)])
    grads = {n: p.grad.detach().clone() for n, p in trainer.named_parameters() if p.grad is not None}
    return values, grads, int(batch.get("valid", torch.ones(0)).sum())


def _two_ranks(worker, *args) -> list:
    """`worker(rank, 2, port, *args, queue)` in two spawned processes of one gloo group: what each put on
    the queue, by rank."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(rank, 2, port, *args, queue)) for rank in range(2)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    return results


def _worker(rank: int, world: int, port: int, stage: int, gather_with_grad: bool, data: str, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        samples = _samples(stage, data)
        half = GLOBAL_BATCH // world
        values, grads, objects = _step(stage, samples[rank * half:(rank + 1) * half], gather_with_grad)
        dist.all_reduce(values)  # logged losses are the mean over ranks
        queue.put((rank, (values / world).tolist(), {k: v.tolist() for k, v in grads.items()}, objects))
        dist.barrier()  # neither rank tears the group down while the other still uses it
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("gather_with_grad", [True, False], ids=["exact-gather", "published-gather"])
@pytest.mark.parametrize("stage", [1, 2])
def test_two_gloo_processes_equal_one_process_on_the_global_batch(stage, gather_with_grad, scene_dataset):
    data = str(scene_dataset["mgrs"])
    want_values, want_grads, _ = _step(stage, _samples(stage, data), gather_with_grad)
    results = _two_ranks(_worker, stage, gather_with_grad, data)
    if stage == 2:  # the ranks really hold different numbers of objects
        assert results[0][3] != results[1][3]
    assert len(want_grads) == sum(1 for p in make_clip(TINY).parameters())  # every weight is trained
    for _, values, grads, _ in results:
        torch.testing.assert_close(torch.tensor(values), want_values, rtol=1e-5, atol=1e-6)
        assert grads.keys() == want_grads.keys()
        for name, want in want_grads.items():
            torch.testing.assert_close(torch.tensor(grads[name]), want, rtol=2e-4, atol=2e-6, msg=name)


def _teacher_worker(rank: int, world: int, port: int, data: str, out: str, queue) -> None:
    """One rank of a random-start stage-1 run with a frozen teacher: its teacher's and student's weights."""
    from training.config import build_config
    from training.distributed import World
    from training.loop import Run

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        cfg = build_config(1, overrides=dict(data=data, samples=16, model=f"random:{TINY}", out=out, batch_size=2,
                                             workers=0, teacher="frozen", global_weight=0.0, tensorboard=False))
        run = Run(cfg, World(rank=rank, size=world))
        teacher = {k: v.tolist() for k, v in run.teacher.model.state_dict().items()}
        student = {k: v.tolist() for k, v in run.clip.state_dict().items()}
        queue.put((rank, teacher, student))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_a_random_start_gives_every_rank_the_same_teacher(scene_dataset, tmp_path):
    """Every rank's frozen (or EMA) teacher is a copy of the network all ranks train — rank 0's weights,
    which DDP gives every rank — not of each rank's own random start."""
    data = str(scene_dataset["shards"] / "{0000..0001}.tar")
    (_, teacher0, student0), (_, teacher1, student1) = _two_ranks(_teacher_worker, data, str(tmp_path / "o"))
    assert student0 == student1  # DDP's broadcast: one network on both ranks
    assert teacher0 == student0 and teacher1 == student1
