"""Per-rank data loaders with a fixed number of steps per epoch (every rank must take the same number
of steps, or DDP waits forever).

Stage 1 reads webdataset shards (`training.data.stream`: seeded shard shuffle, shuffle buffer, split
over ranks and workers); each rank takes exactly samples // (batch × world) batches per epoch, cycling
over its shards if they run short; a resumed epoch continues with the next unseen sample.
Stage 2 reads MGRS with a DistributedSampler (shuffled per epoch, ragged tail dropped); a resumed run
skips the batches of the epoch that were already trained on without loading them.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from engine.errors import InputError
from training.batches import Collate, Stage1Sample, Stage2Samples, augmentation
from training.config import TrainConfig
from training.data.readers import MGRSDataset, expand_shards
from training.data.shards import count_samples
from training.data.stream import ShardStream
from training.interrupt import ignore_in_data_workers


@dataclass
class EpochData:
    steps: int                                  # batches per epoch on every rank
    batches: Callable[[int, int], Iterator]     # (epoch, first step) → batches of that epoch from that step
    samples: int                                # samples in the dataset (all ranks)


def _loader(dataset, cfg: TrainConfig, collate, sampler=None) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, collate_fn=collate,
                                       num_workers=cfg.workers, drop_last=True,
                                       worker_init_fn=ignore_in_data_workers if cfg.workers else None,
                                       persistent_workers=False, pin_memory=torch.cuda.is_available())


def _count(cfg: TrainConfig, shards: list[str], world: int) -> int:
    """`--samples`, else `sizes.json` or a scan — on the main rank only, the others are told."""
    if cfg.samples:
        return cfg.samples
    import torch.distributed as dist

    if world > 1 and dist.is_initialized():
        box = [count_samples(shards) if dist.get_rank() == 0 else 0]
        dist.broadcast_object_list(box, src=0)
        return int(box[0])
    return count_samples(shards)


def stage1_data(cfg: TrainConfig, shards: list[str], size: int, tokenizer, context: int, rank: int,
                world: int) -> EpochData:
    readers = world * max(cfg.workers, 1)
    if len(shards) < readers:
        raise InputError(f"{len(shards)} shard(s) for {world} rank(s) × {max(cfg.workers, 1)} worker(s): "
                         "give at least one shard per reader (or fewer --workers)")
    samples = _count(cfg, shards, world)
    steps = samples // (cfg.batch_size * world)
    if steps < 1:
        raise InputError(f"{samples} samples are fewer than one global batch ({cfg.batch_size} × {world})")
    transform = Stage1Sample(size, cfg.max_boxes, cfg.crop_scale, cfg.crop_ratio, augment=augmentation(cfg))
    collate = Collate(1, tokenizer, context, cfg.max_boxes)

    def batches(epoch: int, first: int) -> Iterator:
        stream = ShardStream(shards, transform, rank=rank, world=world, seed=cfg.seed, epoch=epoch,
                             buffer=cfg.shuffle_buffer, shard_shuffle=cfg.shard_shuffle,
                             batch_size=cfg.batch_size, skip_batches=first)
        return itertools.islice(iter(_loader(stream, cfg, collate)), steps - first)

    return EpochData(steps, batches, samples)


class _SkipSampler(torch.utils.data.Sampler):
    """A DistributedSampler's indices for one epoch, without the first `skip` of them."""

    def __init__(self, sampler, skip: int):
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        return itertools.islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return len(self.sampler) - self.skip


def stage2_data(cfg: TrainConfig, records: MGRSDataset, size: int, tokenizer, context: int, rank: int,
                world: int) -> EpochData:
    dataset = Stage2Samples(records, size, augmentation(cfg), cfg.own_caption)
    steps = len(dataset) // (cfg.batch_size * world)
    if steps < 1:
        raise InputError(f"{len(dataset)} records are fewer than one global batch ({cfg.batch_size} × {world})")
    collate = Collate(2, tokenizer, context, cfg.max_boxes)
    sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True,
                                                  seed=cfg.seed, drop_last=True)

    def batches(epoch: int, first: int) -> Iterator:
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        return itertools.islice(iter(_loader(dataset, cfg, collate, _SkipSampler(sampler, first * cfg.batch_size))),
                                steps - first)

    return EpochData(steps, batches, len(dataset))


def check_data(cfg: TrainConfig) -> MGRSDataset | list[str]:
    """Fail fast on bad data, before a model is loaded; returns what `epoch_data` reads. Stage 2: the
    MGRS records, every one checked against the schema, with the image folder found from the first
    record's image (`--data-root`, else beside text_info.json or its `global_imgs/`). Stage 1: the shard
    list, every local shard present (URLs and pipes are left to the reader)."""
    from pathlib import Path

    if cfg.stage == 2:
        if not Path(cfg.data).is_file():
            raise InputError(f"cannot read {cfg.data}: no such file (stage 2 takes an MGRS text_info.json)")
        return MGRSDataset(cfg.data, cfg.data_root or None, max_boxes=cfg.max_boxes, min_size=cfg.min_box,
                           max_size=cfg.max_box, caption_key=cfg.caption_key, seed=cfg.seed)
    shards = expand_shards(cfg.data)
    local = [u for u in shards if "://" not in u and not u.startswith("pipe:")]
    missing = [u for u in local if not Path(u).is_file()]
    if missing:
        raise InputError(f"{len(missing)} shard(s) not found, e.g. {missing[0]}")
    return shards


def epoch_data(cfg: TrainConfig, data: MGRSDataset | list[str], size: int, tokenizer, context: int, rank: int,
               world: int) -> EpochData:
    """The per-rank loaders of what `check_data` returned."""
    build = stage1_data if cfg.stage == 1 else stage2_data
    return build(cfg, data, size, tokenizer, context, rank, world)
