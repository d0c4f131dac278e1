"""Moving pixels to the model's device and results back without stalling either side.

On a GPU, host arrays travel through pinned (page-locked) memory with non-blocking copies: an upload
neither waits for the kernels queued before it nor blocks the Python thread, and a download is
started right after the kernels that produce it and waited for only where the result is used (the
writer thread), while the next block is already being computed. On a CPU both are plain hand-overs.

    host = pinned(array)                  # reader thread: page-locked copy of a numpy array
    tensor = upload(host, device)         # compute thread: queued copy to the device
    pending = download([labels, scores])  # compute thread: queued copies back
    arrays = pending.result()             # writer thread: waits for those copies only
"""

from __future__ import annotations

import numpy as np
import torch


def pinned(array: np.ndarray) -> torch.Tensor:
    """A host tensor of `array`, page-locked when CUDA is present (so uploads can be asynchronous)."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    return tensor.pin_memory() if torch.cuda.is_available() else tensor


def to_device(values: list, device: torch.device, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """A small tensor of Python numbers on `device`, copied without waiting for the queued kernels
    (a plain `torch.tensor(values, device="cuda")` waits for the whole stream to finish)."""
    host = torch.tensor(values, dtype=dtype)
    if torch.device(device).type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


def upload(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`host` on `device` (non-blocking from pinned memory)."""
    return host.to(device, non_blocking=host.is_pinned())


class Download:
    """Device tensors being copied to the host; `result()` waits for the copies and gives numpy arrays."""

    def __init__(self, tensors: list[torch.Tensor]):
        self._event = None
        if tensors and tensors[0].device.type == "cuda":
            self._host = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in tensors]
            for host, t in zip(self._host, tensors):
                host.copy_(t, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record(torch.cuda.current_stream(tensors[0].device))
        else:
            self._host = [t.cpu() for t in tensors]

    def result(self) -> list[np.ndarray]:
        if self._event is not None:
            self._event.synchronize()
        return [t.numpy() for t in self._host]


def download(tensors: list[torch.Tensor]) -> Download:
    return Download(tensors)
