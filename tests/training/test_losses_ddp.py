"""Two gloo processes, each with half of the global batch, give the losses and gradients of one
process on the whole batch (after DDP-style gradient averaging) — for the exact gather; for open_clip's
gather (published) the same loss values, and the gradient of one process averaged over "each rank's
share" (the contrastive loss with the other half's features detached)."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from training.losses.contrastive import clip_loss
from training.losses.region import region_loss

N, D_IN, D = 8, 6, 4


def _data():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(N, D_IN, generator=g, dtype=torch.float64), torch.randn(N, D_IN, generator=g, dtype=torch.float64),
            torch.tensor([0, 1, 0, 2, 1, 1, 3, 0]))


def _models():
    torch.manual_seed(1)
    image_proj = torch.nn.Linear(D_IN, D).double()
    text_proj = torch.nn.Linear(D_IN, D).double()
    scale = torch.nn.Parameter(torch.tensor(math.log(10.0), dtype=torch.float64))
    return image_proj, text_proj, scale


def _losses(x, y, ids, image_proj, text_proj, scale, exact=True):
    f, g = image_proj(x), text_proj(y)
    return clip_loss(f, g, scale, exact), region_loss(f, g, scale, ids, multi_positive=True)


def _published_reference(x, y, ids, image_proj, text_proj, scale, world=2):
    """One process: the region loss as it is, the contrastive loss as the mean of the ranks' shares."""
    f, g = image_proj(x), text_proj(y)
    shares = []
    for r in range(world):
        live = torch.zeros(N, 1, dtype=torch.bool)
        live[r * N // world:(r + 1) * N // world] = True
        shares.append(clip_loss(torch.where(live, f, f.detach()), torch.where(live, g, g.detach()), scale, False))
    return sum(shares) / world, region_loss(f, g, scale, ids, multi_positive=True)


def _grads(image_proj, text_proj, scale):
    return [p.grad.clone() for p in (*image_proj.parameters(), *text_proj.parameters(), scale)]


def _worker(rank: int, world: int, port: int, exact: bool, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        x, y, ids = _data()
        part = slice(rank * N // world, (rank + 1) * N // world)
        models = _models()
        clip, region = _losses(x[part], y[part], ids[part], *models, exact)
        (clip + region).backward()
        grads = _grads(*models)
        for grad in grads:  # what DDP does: average the gradients over the ranks
            dist.all_reduce(grad)
            grad /= world
        losses = torch.stack([clip.detach(), region.detach()])
        dist.all_reduce(losses)
        queue.put((rank, (losses / world).tolist(), [g.tolist() for g in grads]))
        dist.barrier()  # neither rank tears the group down while the other still uses it (CI: a SIGABRT)
    finally:
        dist.destroy_process_group()
    queue.close()
    queue.join_thread()  # the results are out
    os._exit(0)  # no interpreter teardown, where gloo's threads still aborted a worker once (CI: SIGABRT)


@pytest.mark.parametrize("exact", [True, False], ids=["exact-gather", "published-gather"])
def test_two_processes_equal_one_on_the_global_batch(exact):
    x, y, ids = _data()
    models = _models()
    clip, region = (_losses if exact else _published_reference)(x, y, ids, *models)
    (clip + region).backward()
    want_grads = _grads(*models)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(rank, 2, port, exact, queue)) for rank in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    for _, losses, grads in results:
        torch.testing.assert_close(torch.tensor(losses, dtype=torch.float64),
                                   torch.stack([clip.detach(), region.detach()]))
        for got, want in zip(grads, want_grads):
            torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), want)
    if not exact:  # the published gather really shifts the gradient balance (image weights: ½ on 2 ranks)
        exact_models = _models()
        sum(_losses(x, y, ids, *exact_models)).backward()
        exact_grads = _grads(*exact_models)
        assert not torch.allclose(want_grads[0], exact_grads[0])
        torch.testing.assert_close(want_grads[-1], exact_grads[-1])  # the temperature's gradient is whole
