"""One rank's stream of stage-1 samples for one epoch, as the published loader orders it, and resumable.

    shards   shuffled with a seed derived from (seed, epoch) — the same order on every rank — then
             dealt out: rank r takes every world-th shard, its data-loading worker w every workers-th
             of those (at least one shard per worker, checked by the loader)
    samples  read in tar order through a shuffle buffer (`buffer` samples, 5,000 published; it starts
             yielding once 1,000 are held, as webdataset's does), seeded per (seed, epoch, rank, worker)
    endless  a worker whose shards run out reads them again in a new order (a new pass, its buffer
             drained first), so every rank takes the same number of steps (DDP needs that)

Resuming mid-epoch: the DataLoader hands out batch j from worker j mod W, so after `skip_batches` = k
batches worker w has produced len(range(w, k, W)) of them; a resumed loader starts again at worker 0,
so its worker w takes the part of worker (w + k) mod W, replays that one's seeded stream and drops
the samples already trained on before decoding them, so a resumed epoch continues with the
next unseen sample instead of training on the epoch's first batches again.
Each sample's random local crops and augmentation are drawn from (seed, epoch, rank, worker role,
place in the stream), so a resumed epoch gives every sample the crops it had in the uninterrupted one.
"""

from __future__ import annotations

import itertools
import random
from typing import Callable, Iterator

import torch

from engine.errors import InputError
from training.data.shards import decode_sample, tar_samples

INITIAL = 1000  # samples held before the buffer starts yielding (webdataset's `initial`)


def buffered_shuffle(items: Iterator, size: int, rng: random.Random, initial: int = INITIAL) -> Iterator:
    """Items in a random order from a buffer of at most `size` (0 or 1: the input order). Like
    webdataset's: the buffer takes two items per item yielded until it holds `size`."""
    if size <= 1:
        yield from items
        return
    items, initial, buffer = iter(items), min(initial, size), []

    def pick():
        k = rng.randrange(len(buffer))
        buffer[k], buffer[-1] = buffer[-1], buffer[k]
        return buffer.pop()

    for item in items:
        buffer.append(item)
        if len(buffer) < size:
            extra = next(items, None)
            if extra is not None:
                buffer.append(extra)
        if len(buffer) >= initial:
            yield pick()
    while buffer:
        yield pick()


def _mix(*parts: int) -> int:
    value = 0
    for p in parts:
        value = (value * 1_000_003 + int(p)) % (2 ** 61 - 1)
    return value


class ShardStream(torch.utils.data.IterableDataset):
    """Transformed stage-1 samples of one rank and epoch (see the module docstring)."""

    def __init__(self, urls: list[str], transform: Callable, *, rank: int, world: int, seed: int, epoch: int,
                 buffer: int, shard_shuffle: bool, batch_size: int, skip_batches: int = 0):
        self.urls, self.transform = list(urls), transform
        self.rank, self.world, self.seed, self.epoch = rank, world, seed, epoch
        self.buffer, self.shard_shuffle = buffer, shard_shuffle
        self.batch_size, self.skip_batches = batch_size, skip_batches

    def shards(self, worker: int, workers: int, rerun: int = 0) -> list[str]:
        order = list(self.urls)
        if self.shard_shuffle:
            random.Random(_mix(self.seed, self.epoch, rerun)).shuffle(order)
        return order[self.rank::self.world][worker::workers]

    def one_pass(self, worker: int, workers: int, rerun: int) -> Iterator[dict]:
        for url in self.shards(worker, workers, rerun):
            yield from tar_samples(url)

    def samples(self, worker: int = 0, workers: int = 1) -> Iterator[dict]:
        """This worker's raw samples in training order (before skipping): pass after pass over its
        shards, each pass through its own seeded shuffle buffer (drained at the pass's end, as the
        published loader's buffer is when its shards run out)."""
        for rerun in itertools.count():
            rng = random.Random(_mix(self.seed, self.epoch, self.rank, worker, rerun, 7))
            read = 0
            for sample in buffered_shuffle(self.one_pass(worker, workers, rerun), self.buffer, rng):
                read += 1
                yield sample
            if not read:
                raise InputError(f"no samples in shard(s) {', '.join(self.shards(worker, workers, rerun)) or '(none)'}")

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # the loader's batch j comes from worker j mod W: after a resume at batch k, worker w plays the
        # part worker (w + k) mod W had in the uninterrupted epoch
        role = (worker + self.skip_batches) % workers
        skip = len(range(role, self.skip_batches, workers)) * self.batch_size
        for n, sample in enumerate(itertools.islice(self.samples(role, workers), skip, None), start=skip):
            # random crops and augmentation drawn from (seed, epoch, rank, role, n): a resumed epoch
            # gives each sample the crops it had in the uninterrupted one
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(_mix(self.seed, self.epoch, self.rank, role, n, 11))
                item = self.transform(decode_sample(sample))
            yield item


__all__ = ["ShardStream", "buffered_shuffle"]
