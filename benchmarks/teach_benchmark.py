"""Teaching classes from labelled polygons: time and held-out accuracy, measured in one run.

    .venv/bin/python benchmarks/teach_benchmark.py [--arch ViT-B-32] [--size 2048] [--device cpu]

A synthetic 0.5 m scene (water, grass, roofs, roads, exact labels) and a network with random weights
(its text side knows no class name, so text alone is near chance):
- `classes learn` with 50 labelled polygons on the whole raster: seconds (target < 10 s on a CPU for
  2048² px);
- held-out quality: at most 5 polygons per class from the top half teach the classes; the bottom half
  (no label there) is segmented with the names alone and with the taught classes, and checked with
  `farslip accuracy` against its true polygons (target: mIoU ≥ 0.5 and ≥ text alone + 0.2).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import rasterio  # noqa: E402
import torch  # noqa: E402

from engine.cli import main as farslip  # noqa: E402
from engine.geo.vectors import write_features  # noqa: E402
from engine.models.clip import build_clip  # noqa: E402
from training.data.synthetic import LABELS, class_polygons, scene_labels, write_scene_geotiff  # noqa: E402

CLASSES = "; ".join(LABELS)


def write_labels(path: Path, geoms, names, crs) -> Path:
    write_features(path, geoms, {"class": np.array(names, dtype=object)}, crs, "labels")
    return path


def run(*args: str) -> float:
    t0 = time.perf_counter()
    code = farslip([*args])
    if code != 0:
        raise SystemExit(f"farslip {' '.join(args[:2])} failed ({code})")
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="farslip-teach-bench-") as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        checkpoint = tmp / "random.pt"
        torch.save(build_clip(args.arch).state_dict(), checkpoint)
        model = ["--model", str(checkpoint), "--arch", args.arch, "--device", args.device, "-q"]
        layout = {"road_spacing": 256}
        raster = write_scene_geotiff(tmp / "site.tif", args.size, args.size, res=0.5, **layout)
        truth = scene_labels(args.size, args.size, **layout)
        with rasterio.open(raster) as ds:
            transform, crs = ds.transform, ds.crs
        half = args.size // 2

        # 50 polygons over the whole raster: how long teaching takes
        geoms, names = class_polygons(truth, transform, shrink=1.0)
        order = np.random.default_rng(0).permutation(len(geoms))[:50]
        fifty = write_labels(tmp / "fifty.gpkg", [geoms[i] for i in order], [names[i] for i in order], crs)
        learn_s = run("classes", "learn", str(raster), "--classes", CLASSES, "--labels", str(fifty), "-o",
                      str(tmp / "fifty.classes.json"), "--gsd", "0.5", *model)

        # at most 5 polygons per class in the top half; the bottom half is held out
        labels = write_labels(tmp / "labels.gpkg", *class_polygons(truth, transform, slice(0, half), 5, 1.0), crs)
        reference = write_labels(tmp / "reference.gpkg",
                                 *class_polygons(truth, transform, slice(half, None)), crs)
        taught = tmp / "site.classes.json"
        run("classes", "learn", str(raster), "--classes", CLASSES, "--labels", str(labels), "-o", str(taught),
            "--gsd", "0.5", *model)
        window = f"0,{half},{args.size},{args.size - half}"
        results = {}
        for name, classes in (("text", CLASSES), ("taught", f"@{taught}")):
            out = tmp / name
            run("segment", str(raster), "--classes", classes, "-o", str(out), "--gsd", "0.5", "--window", window,
                "--no-polygons", *model)
            run("accuracy", str(out / "site_classes.tif"), "--reference", str(reference), "-o", str(out / "acc"), "-q")
            results[name] = json.loads((out / "acc" / "accuracy.json").read_text())
        made = json.loads(taught.read_text())
    text, learned = results["text"]["miou"], results["taught"]["miou"]
    print(f"[teach] {args.arch} random weights, {args.device}, synthetic {args.size}² px at 0.5 m")
    print(f"  classes learn, 50 polygons: {learn_s:.1f} s (target < 10 s on a CPU at 2048²; includes loading the model)")
    print(f"  held-out bottom half: text alone mIoU {text:.3f} | taught from ≤ 5 polygons per class in the top half "
          f"mIoU {learned:.3f} (α = {made['alpha']:g}); per class "
          + ", ".join(f"{k} {v['iou']:.2f}" for k, v in results['taught']['per_class'].items()))
    print(f"  RESULT mIoU {learned:.3f} (target >= 0.5), gain over text {learned - text:+.3f} (target >= +0.2)")


if __name__ == "__main__":
    main()
