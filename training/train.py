"""Train FarSLIP (stage 1 or 2) on one process or under `torchrun` (DDP).

    python -m training.torchrun --nproc_per_node=4 -m training.train --stage 1 \\
        --data 'rs5m/{pub11,rs3}-train-{0000..0031}.tar' --samples 5070186 -o runs/stage1
    python -m training.torchrun --nproc_per_node=4 -m training.train --stage 2 --data mgrs/text_info.json \\
        --model openai:ViT-B-16 -o runs/stage2
    python -m training.train --stage 2 --print-config          # effective settings, one JSON object

Settings: the stage's published defaults < `--recipe` (published | revised) < `--config FILE`
(YAML/TOML/JSON) < flags and `--set key=value`. Both stages start from `--model openai:ViT-B-16`
as the published configuration does; `--model runs/stage1/FarSLIP1_ViT-B-16.pt` chains stage 2 onto
stage 1 instead.
Rerunning a command resumes from `OUT/checkpoints/latest.pt`. Bad settings or data end with one line
on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.errors import FarSLIPError, first_line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", type=int, choices=(1, 2))
    p.add_argument("--config", help="YAML/TOML/JSON file of settings (see training/config.py)")
    p.add_argument("--data", help="stage 1: shards ('rs5m/{0000..0031}.tar'); stage 2: MGRS text_info.json")
    p.add_argument("--data-root", help="stage 2: image folder (default: beside text_info.json, or its global_imgs/)")
    p.add_argument("--samples", type=int, help="stage 1: samples in the shards (skips counting; RS5M 5070186)")
    p.add_argument("--recipe", choices=("published", "revised"), help="method choices (default: published)")
    p.add_argument("--val-data", help="zero-shot validation CSV (filepath, label) run after each epoch")
    p.add_argument("--print-config", action="store_true", help="print the effective settings as JSON and exit")
    p.add_argument("--model", help="start: release name, .pt file, openai:ViT-B-16 or random:ARCH")
    p.add_argument("--arch", help="architecture when the model file does not say")
    p.add_argument("-o", "--out", help="run folder (logs, checkpoints, final model)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--batch-size", type=int, help="images per process")
    p.add_argument("--lr", type=float)
    p.add_argument("--warmup", type=int)
    p.add_argument("--teacher", choices=("active", "ema", "frozen"))
    p.add_argument("--long-clip", action="store_true", default=None, help="Long-CLIP text positions (248)")
    p.add_argument("--precision", choices=("auto", "fp32", "amp", "amp_bf16"))
    p.add_argument("--grad-clip", type=float)
    p.add_argument("--workers", type=int, help="data-loading processes per rank")
    p.add_argument("--resume", help="auto (default), never, or a checkpoint path")
    p.add_argument("--device", choices=("cuda", "cpu"), help="default: CUDA when available")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any other setting (repeatable)")
    p.add_argument("-q", "--quiet", action="store_true")
    return p


_FLAG_FIELDS = ("stage", "data", "data_root", "samples", "recipe", "val_data", "model", "arch", "out", "epochs", "max_steps", "batch_size", "lr",
                "warmup", "teacher", "long_clip", "precision", "grad_clip", "workers", "resume")


def _one_line(exc: BaseException) -> str:
    """The message of an error; for one re-raised from a data-loading worker (whose message carries the
    worker's traceback), the original error's own last line."""
    text = str(exc).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1]
        name, sep, rest = text.partition(": ")
        return rest if sep and " " not in name else text
    return first_line(exc)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    world, shutdown, cfg = None, None, None
    try:
        from training.config import build_config, parse_assignments
        from training.distributed import init_world, shutdown

        overrides = parse_assignments(args.set)
        overrides.update({k: getattr(args, k) for k in _FLAG_FIELDS if getattr(args, k) is not None})
        cfg = build_config(args.stage, args.config, overrides, need_data=not args.print_config)
        if args.print_config:
            import json

            from training.config import effective_settings

            print(json.dumps(effective_settings(cfg)))
            return 0
        from training.loop import train

        world = init_world(args.device)
        record = train(cfg, world, quiet=args.quiet)
        if world.main and not args.quiet:
            print(f"done: {record['checkpoint']}  ({record['step']} steps, {record['seconds']:.0f} s)")
        return 0
    except FarSLIPError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # unreadable images or shards, possibly raised in a data-loading worker
        print(f"error: cannot read training data: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        saved = False
        if cfg is not None:  # (not before: a Ctrl-C during the imports imports nothing more)
            from training.checkpoints import find_resume

            saved = find_resume(Path(cfg.out), "auto") is not None  # what the same command would resume
        print("interrupted: the current step is saved; run the same command to resume" if saved else
              "interrupted before the first step: nothing was saved", file=sys.stderr)
        return 130
    finally:
        if world is not None and shutdown is not None:
            shutdown()


if __name__ == "__main__":
    sys.exit(main())
