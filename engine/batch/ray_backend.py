"""Computing work units on Ray: model actors (one per GPU, CPU actors without GPUs) fed by reader actors.

- Each worker is one bundle of a placement group (its CPUs, and a GPU when the cluster has them)
  holding two actors: a model actor and a reader actor beside it on the same node. Readers are
  light CPU workers (no torch: they start in a fraction of a second) that read and decode a unit's
  pixels; the model actor receives them by reference, so it computes one unit while its reader
  reads the next. Both live for the whole run: no process is started per read.
- The weights travel once through the object store from the driver's loaded model, so worker
  nodes need neither the checkpoint file nor Hugging Face access; the text embeddings are computed
  once by the driver and shared the same way.
- Each worker has two units queued while more remain than there are workers, then one, so the
  last units go to whichever worker frees up first instead of waiting behind another unit.
- Actors restart when killed and Ray retries their calls (`max_restarts`, `max_task_retries`), so a
  lost worker costs only its unfinished units.
- `--ray local` starts a Ray on this machine, `auto` joins the running cluster, anything else is a
  cluster address. Ray is imported here only, and this module imports nothing heavy at the top (Ray
  imports it in reader processes): the engine core knows nothing of Ray.
"""

from __future__ import annotations

import logging
import os
import uuid
import warnings
from collections import deque
from typing import Iterable, Iterator

import numpy as np

from engine.batch.units import Result, Unit, read_unit
from engine.errors import FarSLIPError, InputError

MAX_RESTARTS = 8
QUEUED_PER_WORKER = 2
CONNECT_TIMEOUT_S = 10
PLACEMENT_TIMEOUT_S = 300  # waiting for the cluster to have room for every worker (an autoscaler may add nodes)


def import_ray():
    try:
        import ray
    except ImportError:
        raise InputError("--ray needs Ray in this Python environment: pip install 'ray[data]>=2.40' "
                         "(from a clone: pip install -e '.[ray]')") from None
    return ray



def _stop_handlers() -> dict:
    """The handlers of the signals that stop a run, as the command line set them (main thread only)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}


def _restore(handlers: dict) -> None:
    import signal

    for sig, handler in handlers.items():
        if handler is not None:
            signal.signal(sig, handler)

class BlockReader:
    """A reader actor: reads and decodes units' pixels on the CPU."""

    def read(self, unit: Unit):
        return read_unit(unit)


class BlockWorker:
    """A model actor: builds the network once from the shared weights, computes units with the
    driver's shared text embeddings. Both come with each call as object references inside a list
    (not resolved by Ray, so nothing is copied) and are fetched for the first unit — also after Ray
    restarted the actor. Not constructor arguments: Ray warns (an "E" line on every run) that a
    restarted actor needs those; the driver holds the references for the whole run."""

    def __init__(self, arch: str, name: str, device: str | None, precision: str | None, threads: int):
        self.settings = (arch, name, device, precision, threads)
        self.segmenter = None

    def _build(self, weights: dict, segmenter) -> None:
        import torch

        from engine.models.loader import build_from_state_dict, wrap_model

        arch, name, device, precision, threads = self.settings
        torch.set_num_threads(threads)
        with warnings.catch_warnings():  # arrays in the object store are read-only; loading copies them
            warnings.simplefilter("ignore", UserWarning)
            state = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in weights.items()}
        model = wrap_model(build_from_state_dict(state, arch, source=name), arch, name=name, device=device,
                           precision=precision)
        segmenter.attach(model)
        self.segmenter = segmenter

    def compute(self, unit: Unit, pixels, shared: list):
        import ray

        from engine.batch.work import compute_unit

        if self.segmenter is None:
            self._build(*ray.get(shared))
        return compute_unit(self.segmenter, unit, pixels)


def _shareable(state: dict) -> dict:
    """A state dict as numpy arrays where numpy has the type: Ray stores those without pickling and
    actors read them in place (4× faster than pickled tensors for a ViT-B); bfloat16 stays a tensor."""
    import torch

    cpu = {k: v.detach().cpu() for k, v in state.items()}
    return {k: v if v.dtype == torch.bfloat16 else v.numpy() for k, v in cpu.items()}


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

    def __init__(self, address: str, segmenter, workers: int | None = None, device: str | None = None,
                 precision: str | None = None, cpus_per_worker: float = 1.0):
        ray = self.ray = import_ray()
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self.started = False
        if not ray.is_initialized():
            own = _stop_handlers()  # ray.init puts its own SIGTERM handler in (a native abort, no clean stop)
            try:
                if address == "local":
                    cpus = max(os.cpu_count() or 1, int((workers or 1) * cpus_per_worker))
                    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
                else:
                    if address != "auto":
                        check_reachable(address)
                    ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise InputError(f"cannot reach the Ray cluster at '{address}': {_error_line(exc)}") from None
            finally:
                _restore(own)  # Ctrl-C, SIGTERM, SIGHUP stop a Ray run as they stop one in-process
            self.started = True
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        use_gpu = gpus > 0 and (device in (None, "", "auto") or device.startswith("cuda"))
        if workers is None:
            workers = gpus if use_gpu else max(1, int(resources.get("CPU", 1) // max(cpus_per_worker, 1e-9)))
        self.workers = workers
        self.description = f"Ray, {workers} {'GPU' if use_gpu else 'CPU'} worker(s)"
        self.actors: list = []
        self.readers: list = []
        self._inflight: dict = {}

        bundle = {"CPU": cpus_per_worker, **({"GPU": 1} if use_gpu else {})}
        no_room = InputError(f"the Ray cluster has no room for {workers} worker(s) of {bundle} "
                             f"(it has {resources.get('CPU', 0):g} CPUs, {gpus} GPUs); lower --workers")
        self._group = None
        if resources.get("CPU", 0) < workers * cpus_per_worker or (use_gpu and gpus < workers):
            self.close()
            raise no_room
        self._group = placement_group([bundle] * workers, strategy="PACK")
        ready, _ = ray.wait([self._group.ready()], timeout=PLACEMENT_TIMEOUT_S)
        if not ready:  # enough in total, but held by other jobs or spread over too small nodes
            self.close()
            raise no_room

        model = segmenter.model
        # Held for the run: restarted actors are built from these again.
        self._shared = [ray.put(_shareable(model.clip.state_dict())), ray.put(segmenter.without_model())]
        run_id = uuid.uuid4().hex[:8]
        worker_cls = ray.remote(BlockWorker)
        reader_cls = ray.remote(BlockReader)
        for k in range(workers):
            place = PlacementGroupSchedulingStrategy(self._group, placement_group_bundle_index=k)
            self.actors.append(worker_cls.options(
                name=f"farslip-{run_id}-worker-{k}", num_cpus=cpus_per_worker, num_gpus=1 if use_gpu else 0,
                max_restarts=MAX_RESTARTS, max_task_retries=-1, scheduling_strategy=place,
            ).remote(model.arch, model.name, "cuda" if use_gpu else "cpu", precision, max(1, int(cpus_per_worker))))
            self.readers.append(reader_cls.options(
                name=f"farslip-{run_id}-reader-{k}", num_cpus=0, max_restarts=MAX_RESTARTS, max_task_retries=-1,
                scheduling_strategy=place).remote())

    def map(self, units: Iterable[Unit]) -> Iterator[Result]:
        ray = self.ray
        units = iter(units)
        ahead: deque[Unit] = deque()  # units taken from the iterator, not yet submitted
        load = [0] * len(self.actors)
        while True:
            while True:
                while len(ahead) <= self.workers and (unit := next(units, None)) is not None:
                    ahead.append(unit)
                depth = QUEUED_PER_WORKER if len(ahead) > self.workers else 1
                if not ahead or min(load) >= depth:
                    break
                k = load.index(min(load))
                unit = ahead.popleft()
                ref = self.actors[k].compute.remote(unit, self.readers[k].read.remote(unit), self._shared)
                self._inflight[ref] = (unit, k)
                load[k] += 1
            if not self._inflight:
                return
            [ref], _ = ray.wait(list(self._inflight), num_returns=1)
            unit, k = self._inflight.pop(ref)
            load[k] -= 1
            try:
                result = ray.get(ref)
            except Exception as exc:  # a read or compute that failed for good: that input fails
                yield unit, None, _error_line(exc)
                continue
            yield unit, result, None

    def close(self) -> None:
        ray = self.ray
        for ref in list(self._inflight):
            try:
                ray.cancel(ref, force=False)
            except Exception:  # already finished or not cancellable: the actor is killed next anyway
                pass
        self._inflight.clear()
        for actor in self.actors + self.readers:
            ray.kill(actor, no_restart=True)
        if self._group is not None:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(self._group)
        if self.started:
            ray.shutdown()
