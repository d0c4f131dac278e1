"""Throughput of `farslip segment-batch`: Ray with 1 and 2 workers, and Ray's overhead over in-process.

    .venv/bin/python benchmarks/batch_benchmark.py                    # CPU, ViT-B-32 random weights
    .venv/bin/python benchmarks/batch_benchmark.py --size 4480 --block 1024    # 1,521 windows
    .venv/bin/python benchmarks/batch_benchmark.py --device cuda --size 8960   # GPU node: windows/s per GPU

One synthetic raster (size × size px at 0.5 m; 1792 px gives 225 windows of 224 px) is run four
times through the batch driver, each into a fresh folder:
1. in-process (the driver's own model, torch on all `--cpus` threads);
2. in-process with torch on 1 thread (the compute one Ray CPU worker gets);
3. Ray with 1 worker and 4. Ray with 2 workers (1 CPU each), on one local Ray started with `--cpus`
   CPUs (started once, outside the timings, as a running cluster is; placing the workers, shipping
   the weights, actors starting and building their models are inside them, as in a real run).
With `--repeat N` the runs are interleaved N times and medians reported (this machine is shared;
the load average is printed beside the figures). Printed: windows/s of each, the scaling ratio
(2 workers ÷ 1 worker), Ray's overhead as wall time ÷ the in-process run on the same CPUs (1 worker
÷ in-process on 1 thread, 2 workers ÷ in-process on 2 threads; whole runs; target ≤ 1.10), and
whether every run's class map is identical to the in-process one. Start-up is a fixed cost per run,
so the time to the first finished unit and the steady rate after it are printed too.
With `--device cuda` the runs are in-process on the GPU and Ray with 1 GPU worker (and 2 workers when
the node has 2 GPUs); the report then gives windows/s per GPU and Ray ÷ in-process on the same GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import rasterio  # noqa: E402
import torch  # noqa: E402

from engine.batch.local import LocalExecutor  # noqa: E402
from engine.batch.run import BatchSettings, run_batch  # noqa: E402
from engine.dense import Segmenter  # noqa: E402
from engine.models import load_model  # noqa: E402
from engine.models.clip import build_clip  # noqa: E402
from training.data.synthetic import write_scene_geotiff  # noqa: E402

CLASSES = "building,roof; road; tree,forest; water; grass"


def _run(name: str, raster: Path, tmp: Path, block: int, segmenter, make_executor) -> dict:
    out = tmp / name.replace("#", "_")
    t0 = time.perf_counter()
    first: list[tuple[float, int]] = []  # (time, windows) of the first finished unit
    last: list[float] = [0.0]  # time of the last finished unit

    def progress(done: int, _total: int) -> None:
        if done and not first:
            first.append((time.perf_counter() - t0, done))
        last[0] = time.perf_counter() - t0

    executor = make_executor()
    try:
        summary = run_batch([str(raster)], BatchSettings(str(out), block=block), segmenter, executor, progress)
    finally:
        executor.close()
    wall = time.perf_counter() - t0
    windows = summary["windows"]["computed"]
    steady = (windows - first[0][1]) / max(last[0] - first[0][0], 1e-9)
    with rasterio.open(out / f"{raster.stem}_classes.tif") as ds:
        classes = ds.read(1)
    print(f"{name:<16} {windows} windows  {wall:7.2f} s  {windows / wall:6.2f} windows/s  first unit after "
          f"{first[0][0]:5.1f} s, then {steady:6.2f} windows/s", flush=True)
    return {"wall_s": wall, "windows": windows, "windows_per_s": windows / wall, "classes": classes,
            "first_unit_s": first[0][0], "steady_windows_per_s": steady}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--size", type=int, default=1792, help="raster side in pixels")
    parser.add_argument("--block", type=int, default=512, help="block (unit of work) side in pixels")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray and torch threads in-process")
    parser.add_argument("--repeat", type=int, default=1, help="interleaved repetitions (medians reported)")
    parser.add_argument("--device", default="cpu",
                        help="cpu, or cuda on a GPU node: in-process on the GPU, Ray with 1 GPU worker (and 2 "
                             "when there are 2 GPUs), giving windows/s per GPU")
    args = parser.parse_args()

    import ray

    torch.set_num_threads(args.cpus)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        raster = write_scene_geotiff(tmp / "scene.tif", args.size, args.size, res=0.5)
        checkpoint = tmp / "random.pt"
        torch.manual_seed(0)
        torch.save({"state_dict": build_clip(args.arch).state_dict()}, checkpoint)
        segmenter = Segmenter(load_model(str(checkpoint), arch=args.arch, device=args.device), CLASSES)
        gpus = torch.cuda.device_count() if args.device.startswith("cuda") else 0
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        from engine.batch.ray_backend import RayExecutor

        def in_process(threads: int):
            def make():
                torch.set_num_threads(threads)
                return LocalExecutor(segmenter)
            return make

        modes = {"in-process": in_process(args.cpus)}
        if not gpus:
            modes["in-process-1"] = in_process(1)
        modes["ray-1"] = lambda: RayExecutor("auto", segmenter, 1, device=args.device)
        if gpus != 1:
            modes["ray-2"] = lambda: RayExecutor("auto", segmenter, 2, device=args.device)
        runs: dict[str, list[dict]] = {k: [] for k in modes}
        load_before = os.getloadavg()[0]
        for rep in range(args.repeat):
            for name, make in modes.items():
                runs[name].append(_run(f"{name}#{rep}", raster, tmp, args.block, segmenter, make))
                torch.set_num_threads(args.cpus)
        load_after = os.getloadavg()[0]
        ray.shutdown()
    results = {k: {"wall_s": float(np.median([r["wall_s"] for r in v])),
                   "windows": v[0]["windows"], "classes": v[0]["classes"],
                   "windows_per_s": float(np.median([r["windows_per_s"] for r in v])),
                   "first_unit_s": float(np.median([r["first_unit_s"] for r in v])),
                   "steady_windows_per_s": float(np.median([r["steady_windows_per_s"] for r in v]))}
               for k, v in runs.items()}
    same = all(np.array_equal(r["classes"], results["in-process"]["classes"]) for v in runs.values() for r in v)
    report = {
        "arch": args.arch, "size": args.size, "block": args.block, "cpus": args.cpus,
        "windows": results["in-process"]["windows"],
        "windows_per_s": {k: round(r["windows_per_s"], 3) for k, r in results.items()},
        "first_unit_s": {k: round(r["first_unit_s"], 2) for k, r in results.items()},
        "steady_windows_per_s": {k: round(r["steady_windows_per_s"], 3) for k, r in results.items()},
        "class_maps_identical": same,
        "load_average_1min": [round(load_before, 2), round(load_after, 2)],
    }
    if "ray-2" in results:
        report["scaling_2_vs_1_worker"] = round(results["ray-2"]["windows_per_s"] / results["ray-1"]["windows_per_s"], 3)
    if gpus:
        report["windows_per_s_per_gpu"] = {"ray-1": round(results["ray-1"]["windows_per_s"], 3),
                                           "ray-1_steady": round(results["ray-1"]["steady_windows_per_s"], 3)}
        report["ray_overhead_same_gpu"] = {
            "ray-1 / in-process": round(results["ray-1"]["wall_s"] / results["in-process"]["wall_s"], 3)}
    else:
        report["ray_overhead_same_cpus"] = {
            "ray-1 / in-process-1": round(results["ray-1"]["wall_s"] / results["in-process-1"]["wall_s"], 3),
            "ray-2 / in-process": round(results["ray-2"]["wall_s"] / results["in-process"]["wall_s"], 3)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
