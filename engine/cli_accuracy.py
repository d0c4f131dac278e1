"""`farslip accuracy`: a class raster against the user's reference polygons.

    farslip accuracy out/ortho_classes.tif --reference reference.gpkg --field class -o out/accuracy/
"""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.errors import InputError


def _cmd_accuracy(args: argparse.Namespace) -> int:
    from engine.cli_segment import padded
    from engine.geo.accuracy import check_accuracy

    for path, what in ((args.class_raster, "class raster"), (args.reference, "reference file")):
        if not Path(path).exists():
            raise InputError(f"{what} not found: {path}")
    report = check_accuracy(args.class_raster, args.reference, args.field, args.out)
    if not args.quiet:
        print(f"  mIoU {report['miou']:.3f}   overall accuracy {report['overall_accuracy']:.3f}   "
              f"kappa {report['kappa']:.3f}   ({report['labelled_pixels']} labelled pixels)")
        for name, c in report["per_class"].items():
            print(f"  {padded(name, 24)} IoU {c['iou']:.3f}  precision {c['precision']:.3f}  recall {c['recall']:.3f}  "
                  f"{c['reference_pixels']:>10} px")
        if report["conflicting_pixels"]:
            print(f"  left out: {report['conflicting_pixels']} pixels inside reference polygons of different classes")
        if report["skipped_labels"]:
            print("  skipped (no such class): " + ", ".join(f"{k} ({v})" for k, v in report["skipped_labels"].items()))
        for name in ("accuracy.json", "confusion.csv", "confusion.png"):
            print(f"  {Path(args.out) / name}")
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("accuracy", help="check a class raster against reference polygons",
                            description="Per-class IoU, precision and recall, mIoU, overall accuracy and kappa of a "
                                        "FarSLIP class raster over the pixels of reference polygons, with the "
                                        "confusion matrix as CSV and as an image.")
    p.add_argument("class_raster", help="a *_classes.tif written by farslip segment")
    p.add_argument("--reference", required=True, help="reference polygons (GeoPackage, Shapefile, GeoJSON, ...)")
    p.add_argument("--field", default="class", help="the attribute holding each polygon's class (default class)")
    p.add_argument("-o", "--out", required=True, help="folder for accuracy.json, confusion.csv, confusion.png")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_cmd_accuracy)
