"""`farslip data`: build training datasets (registered through the `farslip.commands` entry point).

    farslip data build-mgrs --source dota:/data/DOTA --source dior:/data/DIOR --source coco:/data/x.json -o out/
    farslip data shards --images photos/ --captions captions.csv -o shards/     # stage-1 webdataset shards
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

MIN_TILE = 64  # training.data.mgrs_builder.MIN_TILE (not imported here: the parser loads nothing heavy)


def _at_least(kind: type, minimum: float, what: str):
    """An argparse type: a finite number (`kind`: int or float) of at least `minimum`, `what` naming it."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"'{text}' is not {what}")
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text} is too small: {what} of at least {minimum:g}")
        return value

    return parse


_tile = _at_least(int, MIN_TILE, "a whole number of px")
_min_box = _at_least(float, 0, "a number of px")
_per_shard = _at_least(int, 1, "a whole number of samples")


def _cmd_build_mgrs(args: argparse.Namespace) -> int:
    from engine.cli_segment import progress_bar
    from training.data.captions import load_captioner
    from training.data.categories import CategoryTable
    from training.data.mgrs_builder import BuildOptions, build_mgrs
    from training.data.sources import parse_spec

    for spec in args.source:
        parse_spec(spec)
    bar, progress = progress_bar(args.quiet, "build-mgrs")
    try:
        card = build_mgrs(args.source, args.out, BuildOptions(tile=args.tile, min_box=args.min_box),
                          CategoryTable.from_file(args.synonyms), load_captioner(args.captioner), progress)
    finally:
        bar.close()
    if not args.quiet:
        print(f"  {card['images']} images, {card['objects']} objects, {len(card['categories'])} categories; "
              f"problems: {card['problems'] or 'none'}")
        print(f"  dataset   {Path(args.out) / 'text_info.json'}\n  card      {Path(args.out) / 'card.md'}")
    return 0


def _cmd_shards(args: argparse.Namespace) -> int:
    from engine.cli_segment import progress_bar
    from training.data.shards import write_shards

    bar, progress = progress_bar(args.quiet, "shards")
    try:
        result = write_shards(args.images, args.captions, args.out, args.per_shard, args.image_key, args.caption_key,
                              progress)
    finally:
        bar.close()
    if not args.quiet:
        reasons = ", ".join(f"{why}: {n}" for why, n in result["skipped_by"].items() if n)
        print(f"  {result['samples']} samples in {result['shards']} shard(s), {result['skipped']} skipped"
              + (f" ({reasons})" if reasons else ""))
        if result.get("removed"):
            print(f"  removed {result['removed']} shard(s) of an earlier run that this run did not write")
    print(f"  train with: --data '{result['spec']}' --samples {result['samples']}")
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("data", help="build training datasets")
    sub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    b = sub.add_parser("build-mgrs", help="MGRS-style dataset (tiles, boxes, categories, captions) from annotations")
    b.add_argument("--source", action="append", required=True,
                   help="dota:DIR, dior:DIR, voc:DIR, coco:FILE.json or gpkg:LABELS.gpkg@RASTER.tif (repeatable)")
    b.add_argument("-o", "--out", required=True)
    b.add_argument("--tile", type=_tile, default=1024,
                   help=f"largest tile side in px, at least {MIN_TILE} (larger images are cut)")
    b.add_argument("--min-box", type=_min_box, default=8.0, help="drop boxes narrower than this many px (0 or more)")
    b.add_argument("--synonyms", help="JSON {variant: name} added to the category synonym table")
    b.add_argument("--captioner", help="module:function of a captioner (default: template captions)")
    b.add_argument("-q", "--quiet", action="store_true")
    b.set_defaults(func=_cmd_build_mgrs)
    w = sub.add_parser("shards", help="stage-1 webdataset shards from an image folder + captions (CSV or JSON)")
    w.add_argument("--images", required=True, help="image folder (paths in the captions file are relative to it)")
    w.add_argument("--captions", required=True,
                   help="CSV/TSV with a header (filepath|image|filename + caption|title|text) or JSON "
                        "(a list of such records, or {image: caption})")
    w.add_argument("-o", "--out", required=True, help="output folder: 00000.tar, 00001.tar, ... + sizes.json")
    w.add_argument("--per-shard", type=_per_shard, default=10000, help="samples per shard (default 10000)")
    w.add_argument("--image-key", help="the image column/key when not one of the usual names")
    w.add_argument("--caption-key", help="the caption column/key when not one of the usual names")
    w.add_argument("-q", "--quiet", action="store_true")
    w.set_defaults(func=_cmd_shards)
