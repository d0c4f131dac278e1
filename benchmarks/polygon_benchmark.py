"""How fast class maps become polygons: `PolygonWriter` on synthetic class maps, block by block as a run
feeds it, then its merge across block borders and the GeoPackage.

    .venv/bin/python benchmarks/polygon_benchmark.py                  # 4096² px, blocks of 1024, 1 worker
    .venv/bin/python benchmarks/polygon_benchmark.py --workers 1,2 --size 2048

Three maps of 6 classes at 0.3 m (UTM): `fields`, square patches of 64 px (a few thousand polygons:
straight boundaries, little to simplify), `smooth`, the largest of 6 smoothed noise fields (curved
boundaries, as a model's up-sampled scores give: simplifying does most of its work there), and
`fragmented`, patches of 9 px with 3 % of the pixels another class (hundreds of thousands of polygons,
as a random or weak model gives); a corner of each is no data. Figures: seconds for the blocks and for
the close (merge and last writes), Mpx/s and polygons/s over both, the fastest of `--repeat` runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from affine import Affine  # noqa: E402
from rasterio.crs import CRS  # noqa: E402

from engine.boxes import Box  # noqa: E402
from engine.geo.polygons import PolygonWriter  # noqa: E402

NODATA = 255


def class_map(size: int, patch: int, noise: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 6, (size // patch + 1, size // patch + 1)).astype(np.uint8)
    values = np.kron(cells, np.ones((patch, patch), dtype=np.uint8))[:size, :size]
    scattered = rng.random((size, size)) < noise
    values[scattered] = rng.integers(0, 6, int(scattered.sum()), dtype=np.uint8)
    values[: size // 7, : size // 6] = NODATA
    return values


def smooth_map(size: int, sigma: float = 12.0, seed: int = 0) -> np.ndarray:
    """The class of the largest of 6 smoothed noise fields at each pixel: curved boundaries."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    values = np.argmax([ndimage.gaussian_filter(rng.standard_normal((size, size), dtype=np.float32), sigma)
                        for _ in range(6)], axis=0).astype(np.uint8)
    values[: size // 7, : size // 6] = NODATA
    return values


def trace(values: np.ndarray, block: int, out: Path) -> tuple[float, float, int]:
    """(seconds for the blocks, seconds for the close, polygons written)."""
    size = values.shape[0]
    confidence = np.full(values.shape, 200, dtype=np.uint8)
    writer = PolygonWriter(out, Affine(0.3, 0, 500000.0, 0, -0.3, 5200000.0), CRS.from_epsg(32633), size, size,
                           [f"class{i}" for i in range(6)], simplify_px=1.0, row_area=np.full(size, 0.09))
    t0 = time.perf_counter()
    for y in range(0, size, block):
        for x in range(0, size, block):
            core = Box(y, x, min(block, size - y), min(block, size - x))
            writer.add_block(core, values[y:y + core.h, x:x + core.w], confidence[y:y + core.h, x:x + core.w])
    t1 = time.perf_counter()
    count = writer.close()
    return t1 - t0, time.perf_counter() - t1, count


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--block", type=int, default=1024)
    p.add_argument("--workers", default="1", help="comma list of FARSLIP_POLYGON_WORKERS values to time")
    p.add_argument("--repeat", type=int, default=2)
    args = p.parse_args()
    maps = {"fields": class_map(args.size, 64, 0.0), "smooth": smooth_map(args.size),
            "fragmented": class_map(args.size, 9, 0.03)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for workers in args.workers.split(","):
            os.environ["FARSLIP_POLYGON_WORKERS"] = workers
            for name, values in maps.items():
                runs = []
                for k in range(args.repeat):
                    runs.append(trace(values, args.block, Path(tmp) / f"{name}{workers}_{k}.gpkg"))
                blocks_s, close_s, count = min(runs, key=lambda r: r[0] + r[1])
                total = blocks_s + close_s
                rows.append((name, workers, count, blocks_s, close_s, values.size / total / 1e6, count / total))
    print(f"{args.size}² px, blocks of {args.block} px, fastest of {args.repeat}")
    print(f"{'map':<11} {'workers':>7} {'polygons':>9} {'blocks s':>9} {'close s':>8} {'Mpx/s':>7} {'polygons/s':>11}")
    for name, workers, count, blocks_s, close_s, mpx, per_s in rows:
        print(f"{name:<11} {workers:>7} {count:>9,} {blocks_s:>9.2f} {close_s:>8.2f} {mpx:>7.2f} {per_s:>11,.0f}")


if __name__ == "__main__":
    main()
