"""The engine service under load, measured in one run against a real `farslip serve` process.

    .venv/bin/python benchmarks/service_benchmark.py [--calls 1000] [--clients 8]

- `/v1/health` latency (p50, p95, max) while 8 clients label regions (10 boxes per call) and submit
  small segmentation jobs (target: p95 < 100 ms);
- the server's resident memory after the first 100 label calls and after all of them (target: the
  later within 10 % of the earlier);
- 45 concurrent DELETEs of one running job: the answers (one 204, the rest 404; never a 5xx) and how
  long the slowest took.
A tiny random network (`tiny-vit-16`) keeps the model's own cost small, so what is measured is the
service: threads, the event loop, the job store, memory kept between calls.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402

from engine.models.clip import build_clip  # noqa: E402
from training.data.synthetic import write_scene_geotiff  # noqa: E402

ARCH = "tiny-vit-16"
CLASSES = "building,roof; road; tree,forest; water; grass"


def start_engine(tmp: Path) -> tuple[subprocess.Popen, httpx.Client, str]:
    torch.manual_seed(0)
    torch.save(build_clip(ARCH).state_dict(), tmp / "tiny.pt")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "FARSLIP_CONFIG_DIR": str(tmp / "config"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "serve", "--port", str(port), "--data-dir",
                             str(tmp / "data"), "--allow-root", str(tmp), "--model", str(tmp / "tiny.pt"), "--arch",
                             ARCH, "--device", "cpu", "--max-queue", "64"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=open(tmp / "engine.log", "wb"))
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/v1/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    token = (tmp / "config" / "token").read_text().strip()
    return proc, httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=600), url


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000, help="label calls in all")
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="farslip-service-bench-") as tmp:
        tmp = Path(tmp)
        raster = write_scene_geotiff(tmp / "scene.tif", 1024, 1024, res=0.5)
        big = write_scene_geotiff(tmp / "big.tif", 3000, 3000, res=0.5)
        proc, client, url = start_engine(tmp)
        server = psutil.Process(proc.pid)
        try:
            regions = {"input": {"path": str(raster)}, "classes": CLASSES, "crs": "pixel",
                       "regions": [{"bbox": [90 * i, 50, 90 * i + 80, 130]} for i in range(10)]}
            job = {"input": {"path": str(raster)}, "classes": CLASSES, "window": [0, 0, 300, 300]}
            client.post("/v1/regions/label", json=regions).raise_for_status()  # model loaded, classes embedded
            calls = [0]
            rss_at: dict[int, float] = {}
            lock = threading.Lock()
            stop = threading.Event()
            health_ms: list[float] = []

            def worker() -> None:
                with httpx.Client(base_url=url, headers=client.headers, timeout=600) as c:
                    while True:
                        with lock:
                            if calls[0] >= args.calls:
                                return
                            calls[0] += 1
                            n = calls[0]
                        c.post("/v1/regions/label", json=regions).raise_for_status()
                        if n % 10 == 0:
                            got = c.post("/v1/jobs/segment", json=job)
                            assert got.status_code in (202, 429), got.text
                        if n in (100, args.calls):
                            with lock:
                                rss_at[n] = server.memory_info().rss / 2**20

            def health() -> None:
                with httpx.Client(base_url=url, timeout=60) as c:
                    while not stop.is_set():
                        t0 = time.perf_counter()
                        c.get("/v1/health").raise_for_status()
                        health_ms.append((time.perf_counter() - t0) * 1000)
                        time.sleep(0.05)

            watcher = threading.Thread(target=health)
            watcher.start()
            t0 = time.perf_counter()
            workers = [threading.Thread(target=worker) for _ in range(args.clients)]
            for t in workers:
                t.start()
            for t in workers:
                t.join()
            load_s = time.perf_counter() - t0
            stop.set()
            watcher.join()

            running = client.post("/v1/jobs/segment", json={"input": {"path": str(big)}, "classes": CLASSES,
                                                             "block": 256, "gsd": 0.5}).json()["id"]
            status = client.get(f"/v1/jobs/{running}").json()
            while status["state"] != "running":
                status = client.get(f"/v1/jobs/{running}", params={"wait": 60, "since": status["revision"]}).json()
            answers: list[int] = []
            delete_ms: list[float] = []

            def delete() -> None:
                with httpx.Client(base_url=url, headers=client.headers, timeout=120) as c:
                    t = time.perf_counter()
                    answers.append(c.delete(f"/v1/jobs/{running}").status_code)
                    delete_ms.append((time.perf_counter() - t) * 1000)

            deleters = [threading.Thread(target=delete) for _ in range(45)]
            for t in deleters:
                t.start()
            for t in deleters:
                t.join()
        finally:
            proc.terminate()
            proc.wait(30)
        p95 = percentile(health_ms, 0.95)
        growth = rss_at[args.calls] / rss_at[100]
        print(f"[service] {args.clients} clients, {args.calls} label calls (10 boxes each) + a segment job every 10th "
              f"call, {load_s:.1f} s; {ARCH} on {os.cpu_count()} CPU(s)")
        print(f"  /v1/health under that load: p50 {statistics.median(health_ms):.1f} ms, p95 {p95:.1f} ms, "
              f"max {max(health_ms):.1f} ms over {len(health_ms)} requests (target p95 < 100 ms)")
        print(f"  server RSS after 100 label calls {rss_at[100]:.0f} MB, after {args.calls} {rss_at[args.calls]:.0f} MB:"
              f" RATIO {growth:.3f} (target <= 1.10)")
        print(f"  45 concurrent DELETEs of a running job: {answers.count(204)} x 204, {answers.count(404)} x 404, "
              f"{sum(a >= 500 for a in answers)} x 5xx; slowest {max(delete_ms):.0f} ms")


if __name__ == "__main__":
    main()
