"""Cost of the learned feature up-sampler (SimFeatUp JBU) in `segment`, as a ratio measured in one run.

    .venv/bin/python benchmarks/upsampler_benchmark.py                    # 1024² raster, CPU
    .venv/bin/python benchmarks/upsampler_benchmark.py --size 512 --kind jbu_stack --device cuda

`segment_raster` on the same synthetic raster, ViT-B-16 with random weights, with and without a
`jbu_one` up-sampler (random weights in SegEarth-OV's released file layout, 512-d): the ratio of the
two end-to-end times. The text embedding is computed once beforehand in both cases.
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

import torch  # noqa: E402

from engine.dense import InferenceOptions, Segmenter  # noqa: E402
from engine.dense.jbu import JBUUpsampler  # noqa: E402
from engine.dense.sliding import CropGrid  # noqa: E402
from engine.geo.pipeline import RasterJob, segment_raster  # noqa: E402
from engine.models import wrap_model  # noqa: E402
from engine.models.clip import build_clip  # noqa: E402
from training.data.synthetic import write_scene_geotiff  # noqa: E402

CLASSES = "building,roof; road; tree,forest; water; grass"


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(segmenter: Segmenter, raster: Path, out: Path) -> float:
    t0 = time.perf_counter()
    segment_raster(RasterJob(str(raster), str(out)), segmenter)
    _sync(segmenter.model.device)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024, help="raster side in pixels")
    parser.add_argument("--kind", choices=sorted(JBUUpsampler.kinds), default="jbu_one")
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads or max(1, os.cpu_count() or 1))
    torch.manual_seed(0)
    model = wrap_model(build_clip("ViT-B-16"), "ViT-B-16", name="ViT-B-16-random", device=args.device)
    with tempfile.TemporaryDirectory(prefix="farslip-bench-") as tmp:
        tmp = Path(tmp)
        weights = tmp / f"{args.kind}.ckpt"
        state = JBUUpsampler(512, args.kind).state_dict()
        torch.save({"state_dict": {f"upsampler.{k}": v for k, v in state.items()}}, weights)
        raster = write_scene_geotiff(tmp / "scene.tif", args.size, args.size, res=0.5)
        plain = Segmenter(model, CLASSES, InferenceOptions())
        guided = Segmenter(model, CLASSES, InferenceOptions(upsampler=str(weights)))
        n_crops = len(CropGrid(args.size, args.size, plain.crop, plain.stride).boxes())
        plain_s = _timed(plain, raster, tmp / "plain")
        guided_s = _timed(guided, raster, tmp / "guided")
    print(f"[upsampler] {args.size}x{args.size} px, {n_crops} crops, ViT-B-16 random, batch {plain.batch_size}, "
          f"{model.device} {str(model.dtype).replace('torch.', '')}, {torch.get_num_threads()} threads")
    print(f"  segment without up-sampler {plain_s:.1f} s | with {args.kind} {guided_s:.1f} s")
    print(f"  RATIO with / without = {guided_s / plain_s:.2f}")


if __name__ == "__main__":
    main()
