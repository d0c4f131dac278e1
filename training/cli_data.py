"""`farslip data`: build training datasets (registered through the `farslip.commands` entry point).

    farslip data build-mgrs --source dota:/data/DOTA --source dior:/data/DIOR --source coco:/data/x.json -o out/
"""

from __future__ import annotations

import argparse
from pathlib import Path


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


def add_commands(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("data", help="build training datasets")
    sub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    b = sub.add_parser("build-mgrs", help="MGRS-style dataset (tiles, boxes, categories, captions) from annotations")
    b.add_argument("--source", action="append", required=True,
                   help="dota:DIR, dior:DIR, voc:DIR, coco:FILE.json or gpkg:LABELS.gpkg@RASTER.tif (repeatable)")
    b.add_argument("-o", "--out", required=True)
    b.add_argument("--tile", type=int, default=1024, help="largest tile side in px (larger images are cut)")
    b.add_argument("--min-box", type=float, default=8.0, help="drop boxes narrower than this many px")
    b.add_argument("--synonyms", help="JSON {variant: name} added to the category synonym table")
    b.add_argument("--captioner", help="module:function of a captioner (default: template captions)")
    b.add_argument("-q", "--quiet", action="store_true")
    b.set_defaults(func=_cmd_build_mgrs)
