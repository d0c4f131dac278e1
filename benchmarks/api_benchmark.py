"""Latency of the HTTP API, and its overhead over calling the pipeline directly, measured in one run.

    .venv/bin/python benchmarks/api_benchmark.py

- region labelling: one POST /v1/regions/label with 10 boxes (target < 1 s on a GPU);
- a 1600 x 1000 px segmentation job through the API (submit, wait by long-poll — `GET /v1/jobs/{id}?wait=60`
  answers when the job ends, so no polling interval adds to it — download the class raster) ÷ the
  same `segment_raster` call made directly (target <= 1.05), both warmed up on this raster, then run
  alternately `--repeat` times, the fastest of each counting. ViT-B-16 with random weights, model and
  text embeddings warmed up on both sides; the engine runs as a real uvicorn server on loopback.
  Polygons are written on both sides where pyogrio is installed (a GPU box without it: on neither).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import torch  # noqa: E402
import uvicorn  # noqa: E402

from engine.dense import Segmenter  # noqa: E402
from engine.geo.pipeline import RasterJob, segment_raster  # noqa: E402
from engine.models.clip import build_clip  # noqa: E402
from engine.server.app import ServerSettings, create_app  # noqa: E402
from training.data.synthetic import write_scene_geotiff  # noqa: E402

CLASSES = "building,roof; road; tree,forest; water; grass"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="interleaved API and direct runs; the fastest counts")
    parser.add_argument("--arch", default="ViT-B-16", help="network with random weights (tiny-vit-16: quick on a CPU)")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    polygons = importlib.util.find_spec("pyogrio") is not None
    with tempfile.TemporaryDirectory(prefix="farslip-api-bench-") as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        ckpt = tmp / "random.pt"
        torch.save(build_clip(args.arch).state_dict(), ckpt)
        raster = write_scene_geotiff(tmp / "scene.tif", 1000, 1600, res=0.5)
        small = write_scene_geotiff(tmp / "small.tif", 224, 224, res=0.5)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        app = create_app(ServerSettings(token="bench", port=port, data_dir=tmp / "data", allow_roots=[tmp],
                                        default_model=str(ckpt), default_arch=args.arch))
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        threading.Thread(target=server.run, daemon=True).start()
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": "Bearer bench"},
                              timeout=600)
        while True:
            try:
                client.get("/v1/health")
                break
            except httpx.HTTPError:
                time.sleep(0.1)

        phases: list[dict] = []

        def job(path: Path) -> tuple[float, int]:
            """Seconds from submit to the class raster downloaded, and the status requests it took."""
            t0 = time.perf_counter()
            job_id = client.post("/v1/jobs/segment", json={"input": {"path": str(path)}, "classes": CLASSES,
                                                        "polygons": polygons}).json()["id"]
            submitted = time.perf_counter()
            requests = 0
            while True:
                status = client.get(f"/v1/jobs/{job_id}", params={"wait": 60}).json()
                requests += 1
                if status["state"] in ("done", "failed", "cancelled"):
                    break
            assert status["state"] == "done", status
            done = time.perf_counter()
            client.get(f"/v1/jobs/{job_id}/files/result_classes.tif").raise_for_status()
            end = time.perf_counter()
            phases.append({"submit": submitted - t0, "wait": done - submitted, "download": end - done,
                           "pipeline": (status.get("summary") or {}).get("timing", {}).get("total_s")})
            return end - t0, requests

        job(small)  # warm-up: loads the model, embeds the classes
        regions = {"input": {"path": str(raster)}, "classes": CLASSES, "crs": "pixel",
                   "regions": [{"bbox": [100 * i, 50, 100 * i + 80, 130]} for i in range(10)]}
        client.post("/v1/regions/label", json=regions).raise_for_status()
        t0 = time.perf_counter()
        for _ in range(3):
            client.post("/v1/regions/label", json=regions).raise_for_status()
        label_s = (time.perf_counter() - t0) / 3

        model = app.state.pool.get(str(ckpt), args.arch)
        segmenter = Segmenter(model, CLASSES)

        def direct(k: int) -> float:
            t0 = time.perf_counter()
            segment_raster(RasterJob(str(raster), str(tmp / f"direct{k}"), name="direct", polygons=polygons),
                           segmenter)
            return time.perf_counter() - t0

        job(raster), direct(-1)  # both warm on this raster's size (kernels, allocator, file cache)
        api, plain = [], []
        for k in range(args.repeat):  # interleaved: a busy moment of the machine hits both alike
            api.append(job(raster))
            plain.append(direct(k))
        api_s, status_requests = min(api)
        direct_s = min(plain)
        server.should_exit = True
        print(f"[api] {args.arch} random, {model.device} {str(model.dtype).replace('torch.', '')}"
              f"{'' if polygons else ', no polygons (pyogrio missing)'}")
        print(f"  region labelling, 10 boxes: {label_s * 1000:.0f} ms per call (target < 1 s on a GPU)")
        print(f"  1600x1000 px segmentation, fastest of {args.repeat}: API job {api_s:.3f} s ({status_requests} "
              f"long-poll status request{'s' if status_requests != 1 else ''}) | direct segment_raster "
              f"{direct_s:.3f} s")
        print(f"  RATIO API / direct = {api_s / direct_s:.3f}   (target <= 1.05); each run: API "
              f"{', '.join(f'{a:.3f}' for a, _ in api)} s, direct {', '.join(f'{d:.3f}' for d in plain)} s")
        fastest = phases[-args.repeat:][min(range(args.repeat), key=lambda k: api[k][0])]
        print("  the fastest API job: " + ", ".join(f"{k} {v:.3f} s" for k, v in fastest.items() if v is not None)
              + " (pipeline: segment_raster's own total_s inside the job)")


if __name__ == "__main__":
    main()
