"""Computing work units on Ray: model actors (one per GPU, CPU actors without GPUs) fed by reader tasks.

- Readers are Ray tasks (zero CPUs reserved: they mostly wait on I/O) returning the extended block's
  pixels; each unit's pixels are passed to an actor by reference, so actors never wait on a read
  the driver could have started earlier. The driver keeps `2 × workers` units in flight.
- Actors hold one model each; the text embeddings are computed once by the driver and shared
  through the object store. Actors restart when killed and Ray retries their tasks
  (`max_restarts`, `max_task_retries`), so a lost worker costs only its unfinished units.
- `--ray local` starts a Ray on this machine, `auto` joins the running cluster, anything else is a
  cluster address. Ray is imported here only: the engine core knows nothing of it.
"""

from __future__ import annotations

import copy
import os
import uuid
from typing import Iterable, Iterator

from engine.batch.local import Result
from engine.batch.units import Unit, compute_unit, read_unit
from engine.errors import FarSLIPError, InputError

MAX_RESTARTS = 8
IN_FLIGHT_PER_WORKER = 2


def import_ray():
    try:
        import ray
    except ImportError:
        raise InputError("--ray needs Ray: pip install 'farslip[ray]'") from None
    return ray


class BlockWorker:
    """A model actor: loads the model once, computes units with the driver's shared text embeddings."""

    def __init__(self, model_spec: dict, segmenter):
        from engine.models import load_model

        self.segmenter = segmenter
        segmenter.model = load_model(**model_spec)
        segmenter.text = segmenter.text.to(segmenter.model.device)
        if segmenter.upsampler is not None:
            segmenter.upsampler = segmenter.upsampler.to(segmenter.model.device)
        if not segmenter.options.batch_size:
            segmenter.batch_size = 16 if segmenter.model.device.type == "cuda" else 4

    def compute(self, unit: Unit, rgb):
        return compute_unit(self.segmenter, unit, rgb)


CONNECT_TIMEOUT_S = 10


def check_reachable(address: str) -> None:
    """Fail within seconds on a cluster address nothing listens on (Ray itself retries for minutes)."""
    import socket

    host_port = address.split("://", 1)[-1].rsplit("/", 1)[0]
    host, sep, port = host_port.rpartition(":")
    if not sep or not port.isdigit():
        raise InputError(f"--ray: '{address}' is not local, auto or a cluster address HOST:PORT")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise InputError(f"cannot reach the Ray cluster at '{address}': {exc.strerror or exc}") from None


def _error_line(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc
    if isinstance(cause, FarSLIPError):
        return str(cause)
    first = (str(cause).strip().splitlines() or [""])[-1]
    return f"{type(cause).__name__}: {first}"


class RayExecutor:
    """Runs units on a Ray cluster; see the module docstring."""

    def __init__(self, address: str, segmenter, model_spec: dict, workers: int | None = None,
                 cpus_per_worker: float = 1.0):
        ray = self.ray = import_ray()
        self.started = False
        if not ray.is_initialized():
            try:
                if address == "local":
                    cpus = max(os.cpu_count() or 1, int((workers or 1) * cpus_per_worker))
                    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
                else:
                    if address != "auto":
                        check_reachable(address)
                    ray.init(address=address, include_dashboard=False, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise InputError(f"cannot reach the Ray cluster at '{address}': {_error_line(exc)}") from None
            self.started = True
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        device = model_spec.get("device") or "auto"
        use_gpu = gpus > 0 and (device == "auto" or device.startswith("cuda"))
        if workers is None:
            workers = gpus if use_gpu else max(1, int(resources.get("CPU", 1) // max(cpus_per_worker, 1e-9)))
        self.workers = workers
        self.description = f"Ray, {workers} {'GPU' if use_gpu else 'CPU'} worker(s)"
        light = copy.copy(segmenter)
        light.model = None
        light.text = segmenter.text.cpu()
        self._shared = shared = ray.put(light)  # held for the run: restarted actors are built from it again
        actor_cls = ray.remote(BlockWorker)
        self.run_id = uuid.uuid4().hex[:8]
        self.actors = [actor_cls.options(name=f"farslip-{self.run_id}-worker-{k}", num_cpus=cpus_per_worker,
                                         num_gpus=1 if use_gpu else 0, max_restarts=MAX_RESTARTS,
                                         max_task_retries=-1).remote(model_spec, shared)
                       for k in range(workers)]
        self._read = ray.remote(num_cpus=0, max_retries=3)(read_unit)
        self._inflight: dict = {}

    def map(self, units: Iterable[Unit]) -> Iterator[Result]:
        ray = self.ray
        units = iter(units)
        load = [0] * len(self.actors)
        exhausted = False
        while True:
            while not exhausted and len(self._inflight) < IN_FLIGHT_PER_WORKER * len(self.actors):
                unit = next(units, None)
                if unit is None:
                    exhausted = True
                    break
                k = load.index(min(load))
                ref = self.actors[k].compute.remote(unit, self._read.remote(unit))
                self._inflight[ref] = (unit, k)
                load[k] += 1
            if not self._inflight:
                return
            [ref], _ = ray.wait(list(self._inflight), num_returns=1)
            unit, k = self._inflight.pop(ref)
            load[k] -= 1
            try:
                yield unit, ray.get(ref), None
            except Exception as exc:  # a read or compute that failed for good: that input fails
                yield unit, None, _error_line(exc)

    def close(self) -> None:
        ray = self.ray
        for ref in list(self._inflight):
            try:
                ray.cancel(ref, force=False)
            except Exception:  # already finished or not cancellable: the actor is killed next anyway
                pass
        self._inflight.clear()
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        if self.started:
            ray.shutdown()
