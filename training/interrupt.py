"""Ctrl-C (SIGINT) and SIGTERM during training: every rank stops after the same step.

A signal only sets a flag; after each optimiser step the ranks agree (one all-reduce of a single
number) whether any of them was signalled, and all of them stop together. So no rank leaves while
another waits in a collective for it (which ends in "Connection closed by peer" tracebacks or an
abort), and torchrun's own forwarded second SIGINT changes nothing. SIGTERM (a scheduler's
pre-emption, torchrun passing its own SIGTERM on) is treated the same way.
"""

from __future__ import annotations

import os
import signal
import threading

import torch
import torch.distributed as dist

from training.distributed import World

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Install with `with StopRequest(world) as stop:`; ask `stop.agreed()` at each step boundary."""

    def __init__(self, world: World):
        self.world = world
        self.signal: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _on_signal(self, signum: int, frame) -> None:
        if self.signal is None and self.world.main:
            os.write(2, b"stopping after this step: saving it...\n")  # os.write: safe inside a handler
        self.signal = signum

    def agreed(self) -> bool:
        """True on every rank once any rank was signalled (a collective: every rank must call it)."""
        asked = self.signal is not None
        if self.world.size == 1 or not dist.is_initialized():
            return asked
        device = self.world.device if self.world.device.type == "cuda" else torch.device("cpu")
        flag = torch.tensor([1 if asked else 0], dtype=torch.int32, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def ignore_in_data_workers(_worker_id: int) -> None:
    """DataLoader `worker_init_fn`: a terminal's Ctrl-C reaches the loader's workers too; they keep
    serving the step in flight and the training process decides when to stop. (SIGTERM keeps its
    default: the loader and multiprocessing end stuck workers with it.)"""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
