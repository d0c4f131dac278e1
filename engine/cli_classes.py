"""`farslip classes learn`: teach classes from labelled polygons (visual prototypes beside the names).

    farslip classes learn ortho.tif --classes "building; road; tree; solar panel" \
        --labels labels.gpkg --field class -o site.classes.json
    farslip segment other.tif --classes @site.classes.json -o out/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.errors import InputError


def _cmd_learn(args: argparse.Namespace) -> int:
    from engine.cli_segment import _check_writable, class_spec, padded, print_notes
    from engine.geo.bands import parse_bands
    from engine.job import SegmentSettings
    from engine.taught_format import SUFFIX

    if not args.out.endswith(SUFFIX):
        raise InputError(f"-o must name a file ending in {SUFFIX} (that is how --classes @FILE knows it)")
    if args.classes.endswith(SUFFIX):
        raise InputError("--classes names the classes to teach (text or @file.txt), not a taught-classes file")
    if not Path(args.labels).exists():
        raise InputError(f"labels file not found: {args.labels}")
    out = Path(args.out)
    if out.is_dir():
        raise InputError(f"-o {out} is a folder: name the file to write, e.g. {out / ('site' + SUFFIX)}")
    _check_writable(out.parent)  # made if missing: checked before the work, not after it
    bands = parse_bands(args.bands)
    settings = SegmentSettings.from_fields(
        classes=class_spec(args.classes), model=args.model, arch=args.arch, bands=list(bands) if bands else None,
        gsd=args.gsd, nodata=args.nodata, preset=args.preset, global_bias=args.global_bias)
    with settings.open_source(args.input, inspect_pixels=False) as source:  # a bad raster: before the model
        source.probe()
    from engine.dense import Segmenter  # the network code, once the arguments are checked
    from engine.geo.teach import teach_from_file
    from engine.models import load_model

    model = load_model(args.model, arch=args.arch, device=args.device, precision=args.precision)
    segmenter = Segmenter(model, settings.prompts, settings.inference_options(batch_size=args.batch_size))
    with settings.open_source(args.input) as source:  # probed above
        print_notes(source.notes)
        taught = teach_from_file(segmenter, source, args.labels, args.field)
    out = taught.save(args.out)
    if not args.quiet:
        scores = taught.made["held_out_miou_by_alpha"]
        print(f"  taught {len(taught.prototypes)} of {len(taught.prompts.classes)} classes from "
              f"{sum(taught.made['polygons'].values())} polygons; label weight α = {taught.alpha:g} (held-out "
              f"mIoU {scores[f'{taught.alpha:g}']:.3f}; text alone {scores['0']:.3f}, labels alone {scores['1']:.3f})")
        for label, n in taught.made["polygons"].items():
            print(f"  {padded(label, 24)} {n:>4} polygon(s) {taught.made['patches'][label]:>8} patches")
        skipped = taught.made["skipped_labels"]
        if skipped:
            print(f"  skipped labels (a name alone: no such class): {', '.join(f'{k} ({v})' for k, v in skipped.items())}",
                  file=sys.stderr)
        print(f"  classes   {out}")
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    from engine.cli_segment import add_model_arguments, add_nodata_argument

    classes = commands.add_parser("classes", help="teach classes from labelled polygons")
    actions = classes.add_subparsers(dest="classes_command", required=True, metavar="ACTION")
    p = actions.add_parser("learn", help="visual prototypes of classes from labelled polygons on a raster",
                           description="Learn a visual prototype per class from polygons labelled with its name, "
                                       "with segmentation's own crops and features; the weight of the labels "
                                       "against the names is chosen on held-out labels. Use the result with "
                                       "--classes @FILE in segment and segment-batch.")
    p.add_argument("input", help="raster the labels were drawn on")
    p.add_argument("--classes", required=True, help="'building,roof; road; tree' or @file.txt (a class may be "
                                                    "taught by labels alone: any name will do)")
    p.add_argument("--labels", required=True, help="polygons (GeoPackage, Shapefile, GeoJSON, ...)")
    p.add_argument("--field", default="class", help="the attribute holding each polygon's class (default class)")
    p.add_argument("-o", "--out", required=True, help="the taught classes, SITE.classes.json")
    p.add_argument("--bands", help="three 1-based band numbers for R,G,B")
    p.add_argument("--gsd", type=float, help="working resolution in metres per pixel (use the one you segment at)")
    add_nodata_argument(p)
    p.add_argument("--preset", default="paper", choices=["paper", "enhanced"], help="inference preset")
    p.add_argument("--global-bias", type=float, help="λ of the global-bias subtraction (as for segment)")
    p.add_argument("--batch-size", type=int, help="crops per forward pass")
    p.add_argument("-q", "--quiet", action="store_true")
    add_model_arguments(p)
    p.set_defaults(func=_cmd_learn)
