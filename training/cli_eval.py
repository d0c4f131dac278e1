"""`farslip eval`: check a checkpoint against the paper's benchmarks (registered as a `farslip`
sub-command through the `farslip.commands` entry point, so the engine never imports training).

    farslip eval ovss --dataset loveda --root /data/LoveDA --model farslip2-vit-b-16 -o results/
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from engine.errors import InputError


def _note(text: str) -> None:
    print(f"farslip: note: {text}", file=sys.stderr)


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be at least 1 (got {limit})")


def _cmd_ovss(args: argparse.Namespace) -> int:
    from engine.cli_segment import _check_writable, progress_bar
    from engine.models import load_model
    from engine.dense.upsampler import check_spec
    from training.evaluate.ovss import evaluate_ovss, run_name
    from training.evaluate.ovss_datasets import get_dataset
    from training.evaluate.report import write_report

    _check_limit(args.limit)
    dataset = get_dataset(args.dataset)
    dataset.pairs(args.root)  # a wrong layout fails before the model loads
    if args.upsampler:
        check_spec(args.upsampler)
    out = Path(args.out)
    _check_writable(out)
    model = load_model(args.model, arch=args.arch, device=args.device, precision=args.precision)
    run = run_name(args.preset, args.upsampler)
    bar, progress = progress_bar(args.quiet, f"ovss {dataset.name} ({run})")
    try:
        result = evaluate_ovss(model, dataset, args.root, args.preset, out, args.limit, progress, args.upsampler,
                               notice=_note)
    finally:
        bar.close()
    path = out / f"ovss_{dataset.name}_{run}_{model_slug(model)}.json"  # one per model: a second never replaces it
    path.write_text(json.dumps(result, indent=2), encoding="utf-8")
    report = write_report(out)
    if not args.quiet:
        print(f"  {dataset.name}: mIoU {result['miou']:.2f}  pixel accuracy {result['pixel_accuracy']:.2f}  "
              f"({result['images']} images)")
        print(f"  results   {path}\n  report    {report}")
    return 0


def model_slug(model) -> str:
    """The model's name as a file name part (a release name, or a checkpoint file's stem)."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", Path(model.name).stem).strip("-") or "model"


def _cmd_zero_shot(args: argparse.Namespace) -> int:
    from engine.cli_segment import _check_writable, progress_bar
    from engine.models import load_model
    from training.evaluate import zero_shot

    _check_limit(args.limit)
    out = Path(args.out)
    _check_writable(out)
    source = Path(args.csv)
    if not source.exists():
        raise InputError(f"not found: {source}")
    if getattr(args, "classnames", None) and not Path(args.classnames).is_file():
        raise InputError(f"class names file not found: {args.classnames}")  # before the model loads
    model = load_model(args.model, arch=args.arch, device=args.device, precision=args.precision)
    bar, progress = progress_bar(args.quiet, f"{args.eval_command} {args.name}")
    # a rerun with the same model continues from here (the cache is tied to the model's weights and the images)
    cache = out / f"{args.eval_command}_{args.name.lower()}_embeddings.npz"
    try:
        if args.eval_command == "classify":
            result = zero_shot.evaluate_classification(model, args.csv, args.classnames, args.limit, progress, cache)
        else:
            result = zero_shot.evaluate_retrieval(model, args.csv, args.caption_column, args.limit, progress,
                                                  args.images_root, cache, notice=_note,
                                                  caption_prefix=args.caption_prefix, dataset=args.name)
    finally:
        bar.close()
    from training.evaluate.report import write_report

    result["dataset"] = args.name.lower()
    path = out / f"{args.eval_command}_{result['dataset']}_{model_slug(model)}.json"
    path.write_text(json.dumps(result, indent=2), encoding="utf-8")
    report = write_report(out)
    if not args.quiet:
        if args.eval_command == "classify":
            print(f"  {args.name}: top-1 {result['top1']:.2f}  top-5 {result['top5']:.2f}")
        else:
            print(f"  {args.name}: I2T mean recall {result['i2t']['mean_recall']:.2f}  "
                  f"T2I mean recall {result['t2i']['mean_recall']:.2f}")
        print(f"  results   {path}\n  report    {report}")
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    from engine.cli_segment import add_model_arguments
    from training.evaluate.ovss_datasets import DATASETS

    p = commands.add_parser("eval", help="evaluate a checkpoint on the paper's benchmarks")
    sub = p.add_subparsers(dest="eval_command", required=True, metavar="TASK")
    o = sub.add_parser("ovss", help="open-vocabulary semantic segmentation mIoU")
    o.add_argument("--dataset", required=True, help=f"one of: {', '.join(DATASETS)}")
    o.add_argument("--root", required=True, help="dataset folder (the public layout, see training/evaluate/ovss_datasets.py)")
    o.add_argument("--preset", default="paper", choices=["paper", "enhanced"])
    o.add_argument("--upsampler", metavar="PATH", help="learned feature up-sampler weights (SegEarth-OV's "
                   "SimFeatUp JBU .ckpt, or hf://owner/repo/file) on top of the preset; results: <preset>+jbu")
    o.add_argument("--limit", type=int, help="only the first N images (smoke runs)")
    o.add_argument("-o", "--out", required=True, help="results folder (JSON per run, Markdown report)")
    o.add_argument("-q", "--quiet", action="store_true")
    add_model_arguments(o)
    o.set_defaults(func=_cmd_ovss)
    for task, text in (("classify", "zero-shot scene classification top-1/top-5"),
                       ("retrieval", "image-text retrieval R@1/5/10 and mean recall")):
        z = sub.add_parser(task, help=text)
        z.add_argument("--csv", required=True, help="split CSV (filepath + label / caption columns); for classify "
                       "also an image folder with a sub-folder per class; for retrieval also the caption JSON")
        z.add_argument("--name", required=True, help="dataset name for the results (e.g. aid, rsicd)")
        if task == "classify":
            z.add_argument("--classnames", help="classnames.txt, one class per line (with a CSV)")
        else:
            z.add_argument("--caption-column", help="caption column (default: caption/title/text/sentence)")
            z.add_argument("--images-root", help="image folder of a caption JSON (default: beside it)")
            z.add_argument("--caption-prefix", help="text put before every caption (default: the published "
                           "evaluation's, 'a satellite image. ' for rsicd, rsitmd and ucm; '' for none)")
        z.add_argument("--limit", type=int, help="only the first N rows")
        z.add_argument("-o", "--out", required=True)
        z.add_argument("-q", "--quiet", action="store_true")
        add_model_arguments(z)
        z.set_defaults(func=_cmd_zero_shot)
