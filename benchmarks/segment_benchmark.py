"""Speed and memory of `farslip segment`, as ratios measured in one run.

    .venv/bin/python benchmarks/segment_benchmark.py            # all three figures
    .venv/bin/python benchmarks/segment_benchmark.py --only overhead --size 1536

1. overhead: end-to-end `segment_raster` time ÷ the pure batched model forward on the same crops
   (ViT-B-16, random weights; target ≤ 1.15). The text embedding is computed once beforehand, as a
   server or a batch run does; its one-off cost is printed separately.
2. memory: peak RSS of a `farslip segment` process on a 16k × 16k synthetic raster ÷ on a 2k × 2k one
   (tiny model so that the pipeline's own memory is what is measured; target ≤ 1.3).
3. batching: the engine's batched inference ÷ a per-crop, batch-1, fp32 loop like the published
   evaluation code, on the same crops (target ≥ 3× on GPU; CPU reported too).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from engine.dense import InferenceOptions, Segmenter  # noqa: E402
from engine.dense.forward import dense_features  # noqa: E402
from engine.dense.sliding import CropGrid  # noqa: E402
from engine.geo.pipeline import RasterJob, segment_raster  # noqa: E402
from engine.models import wrap_model  # noqa: E402
from engine.models.clip import build_clip  # noqa: E402
from training.data.synthetic import write_scene_geotiff  # noqa: E402

CLASSES = "building,roof; road; tree,forest; water; grass"


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def random_model(arch: str, device: str | None):
    torch.manual_seed(0)
    return wrap_model(build_clip(arch), arch, name=f"{arch}-random", device=device)


def bench_overhead(args, tmp: Path) -> None:
    model = random_model("ViT-B-16", args.device)
    raster = write_scene_geotiff(tmp / "overhead.tif", args.size, args.size, res=0.5)
    t0 = time.perf_counter()
    segmenter = Segmenter(model, CLASSES, InferenceOptions(batch_size=args.batch))
    text_s = time.perf_counter() - t0
    n_crops = len(CropGrid(args.size, args.size, segmenter.crop, segmenter.stride).boxes())
    batch = segmenter.batch_size

    # warm-up (one batch), then the pure model forward on the same number of crops and batch size
    crops = torch.randn(batch, 3, 224, 224, device=model.device, dtype=model.dtype)
    with torch.inference_mode():
        dense_features(model.clip.visual, crops)
        _sync(model.device)
        t0 = time.perf_counter()
        left = n_crops
        while left > 0:
            dense_features(model.clip.visual, crops[:min(batch, left)])
            left -= batch
        _sync(model.device)
    pure_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    segment_raster(RasterJob(str(raster), str(tmp / "out"), block=args.block), segmenter)
    _sync(model.device)
    end_s = time.perf_counter() - t0
    print(f"[overhead] {args.size}x{args.size} px, {n_crops} crops, ViT-B-16 random, batch {batch}, "
          f"{model.device} {str(model.dtype).replace('torch.', '')}")
    print(f"  pure model forward {pure_s:.2f} s | end-to-end segment_raster {end_s:.2f} s "
          f"(read, crops, logits, blend, write COG, polygons, summary)")
    print(f"  RATIO end-to-end / pure model = {end_s / pure_s:.3f}   (target <= 1.15)")
    print(f"  one-off text embedding of {len(segmenter.prompts.names)} names x 80 templates: {text_s:.2f} s")


def bench_batching(args, tmp: Path) -> None:
    import torch.nn.functional as F

    model = random_model("ViT-B-16", args.device)
    segmenter = Segmenter(model, CLASSES, InferenceOptions(batch_size=args.batch))
    size = args.batch_size_image
    image = torch.randn(3, size, size)
    boxes = CropGrid(size, size, 224, 112).boxes()
    segmenter.logits(image[:, :224, :224])  # warm-up
    _sync(model.device)
    t0 = time.perf_counter()
    segmenter.logits(image)
    _sync(model.device)
    batched_s = time.perf_counter() - t0

    # the published evaluation's way: one crop at a time, fp32, up-sample, accumulate
    fp32 = wrap_model(model.clip.float(), "ViT-B-16", device=str(model.device), precision="fp32")
    text = segmenter.text
    t0 = time.perf_counter()
    with torch.inference_mode():
        total = torch.zeros(text.shape[0], size, size, device=fp32.device)
        count = torch.zeros(1, size, size, device=fp32.device)
        for b in boxes:
            crop = image[None, :, b.y:b.y + b.h, b.x:b.x + b.w].to(fp32.device)
            feats = F.normalize(dense_features(fp32.clip.visual, crop)[0], dim=-1)
            logits = (feats @ text.T).permute(2, 0, 1)[None]
            total[:, b.y:b.y + b.h, b.x:b.x + b.w] += F.interpolate(logits, size=(b.h, b.w), mode="bilinear")[0]
            count[:, b.y:b.y + b.h, b.x:b.x + b.w] += 1
        _ = total / count
    _sync(fp32.device)
    loop_s = time.perf_counter() - t0
    print(f"[batching] {size}x{size} px, {len(boxes)} crops, ViT-B-16 random, {model.device}")
    print(f"  engine (batch {segmenter.batch_size}, {str(model.dtype).replace('torch.', '')}) {batched_s:.2f} s | "
          f"per-crop batch-1 fp32 loop {loop_s:.2f} s")
    print(f"  RATIO speed-up = {loop_s / batched_s:.2f}x   (target >= 3x on GPU)")


def _peak_rss_mb(raster: Path, out: Path, ckpt: Path) -> tuple[float, float]:
    code = ("import resource, sys; from engine.cli import main; rc = main(sys.argv[1:]); "
            "print('RSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, "segment", str(raster), "--classes", CLASSES, "-o", str(out),
                           "--model", str(ckpt), "--arch", "tiny-vit-16", "-q", "--device", "cpu"],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    rss_kb = float(proc.stdout.split("RSS")[1].split()[0])
    return rss_kb / 1024, time.perf_counter() - t0


def bench_memory(args, tmp: Path) -> None:
    torch.manual_seed(0)
    ckpt = tmp / "tiny.pt"
    torch.save(build_clip("tiny-vit-16").state_dict(), ckpt)
    small = write_scene_geotiff(tmp / "small.tif", 2048, 2048, road_spacing=512, roof=64)
    large = write_scene_geotiff(tmp / "large.tif", args.large, args.large, road_spacing=512, roof=64)
    rss_small, t_small = _peak_rss_mb(small, tmp / "out-small", ckpt)
    rss_large, t_large = _peak_rss_mb(large, tmp / "out-large", ckpt)
    print("[memory] farslip segment, tiny model, CPU, default block 1024")
    print(f"  2048x2048: peak RSS {rss_small:.0f} MB ({t_small:.0f} s) | {args.large}x{args.large}: "
          f"peak RSS {rss_large:.0f} MB ({t_large:.0f} s)")
    print(f"  RATIO peak RSS large / small = {rss_large / rss_small:.3f}   (target <= 1.3)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["overhead", "memory", "batching"])
    parser.add_argument("--size", type=int, default=1024, help="raster side for the overhead run")
    parser.add_argument("--large", type=int, default=16384, help="raster side for the large memory run")
    parser.add_argument("--batch-size-image", type=int, default=672, help="image side for the batching run")
    parser.add_argument("--batch", type=int, default=None, help="crops per forward (default: the engine's)")
    parser.add_argument("--block", type=int, default=1024)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory(prefix="farslip-bench-") as tmp:
        for name, fn in (("overhead", bench_overhead), ("batching", bench_batching), ("memory", bench_memory)):
            if args.only in (None, name):
                fn(args, Path(tmp))


if __name__ == "__main__":
    main()
