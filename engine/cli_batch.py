"""`farslip segment-batch`: segment many rasters (or one huge one) in-process or on Ray.

    farslip segment-batch tiles/*.tif --classes "building; road; tree; water" -o out/
    farslip segment-batch catalogue.vrt --classes @prompts.txt -o out/ --ray auto
    farslip segment-batch list.txt --classes ... -o out/ --ray local --workers 4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.cli_segment import (_check_writable, add_inference_arguments, add_model_arguments,
                                add_output_arguments, inference_options, padded, print_notes, progress_bar,
                                segment_settings)
from engine.errors import EXIT_INTERRUPTED, InputError

EXIT_FAILURES = 1


def _cmd_segment_batch(args: argparse.Namespace) -> int:
    from engine.batch.inputs import expand_inputs
    from engine.geo.raster_names import raster_exists

    if args.workers is not None and args.workers < 1:
        raise InputError("--workers must be at least 1")
    if args.workers is not None and args.ray is None:
        raise InputError("--workers needs --ray (local, auto or a cluster address)")
    if args.ray is not None:
        from engine.batch.ray_backend import import_ray

        import_ray()  # a missing Ray is reported before any work
    job = segment_settings(args)
    options = inference_options(job, args)
    inputs = expand_inputs(args.inputs)
    missing = [p for p in inputs if not raster_exists(p)]
    # nothing to run: said before a model is fetched (one missing input among others fails alone)
    if inputs and len(missing) == len(inputs):
        raise InputError(f"input raster not found: {missing[0]}"
                         + (f" (none of the {len(inputs)} inputs exists)" if len(inputs) > 1 else ""))
    _check_writable(Path(args.out))

    from engine.batch.run import BatchSettings, check_batch_outputs, run_batch  # the network code, once checked
    from engine.dense import Segmenter
    from engine.geo.pipeline import DEFAULT_BLOCK
    from engine.models import load_model

    settings = BatchSettings(out_dir=args.out, bands=tuple(job.bands) if job.bands else None, gsd=job.gsd,
                             block=job.block or DEFAULT_BLOCK, scores=job.scores, polygons=job.polygons,
                             min_area=job.min_area, simplify=job.simplify, nodata=job.nodata)
    check_batch_outputs(inputs, settings)  # before a model is fetched and loaded
    driver_device = "cpu" if args.ray is not None else args.device
    model = load_model(args.model, arch=args.arch, device=driver_device, precision=args.precision)
    segmenter = Segmenter(model, job.prompts, options)
    if args.ray is None:
        from engine.batch.local import LocalExecutor

        executor = LocalExecutor(segmenter)
    else:
        from engine.batch.ray_backend import RayExecutor

        executor = RayExecutor(args.ray, segmenter, args.workers, device=args.device, precision=args.precision)
    bar, progress = progress_bar(args.quiet, f"segment-batch {len(inputs)} raster(s), {executor.description}")
    bar.unit = "window"
    try:
        summary = run_batch(inputs, settings, segmenter, executor, progress=progress)
    except KeyboardInterrupt:
        bar.close()
        executor.close()
        print("farslip: interrupted; finished windows are kept: rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        bar.close()
    executor.close()
    replaced = [s["name"] for s in summary["per_input"] if s.get("replaces") and s["status"] == "done"]
    if replaced:
        print(f"farslip: replaced the earlier outputs of {len(replaced)} input(s) made with other settings or from "
              f"an earlier version of the file: "
              f"{', '.join(replaced[:5])}{' ...' if len(replaced) > 5 else ''}", file=sys.stderr)
    for entry in summary["per_input"]:
        print_notes(entry.get("notes", []))
    print_notes(summary["notes"])
    for failure in summary["failures"]:
        print(f"farslip: failed: {failure['input']}: {failure['error']}", file=sys.stderr)
    if not args.quiet:
        w = summary["windows"]
        print(f"  {summary['done']} done ({summary['replaced']} replacing other settings' outputs), "
              f"{summary['done_earlier']} done earlier with the same settings, {summary['failed']} failed; "
              f"{w['computed']} windows computed ({w['resumed']} resumed), "
              f"{summary['throughput']['windows_per_s']} windows/s")
        for name, area in summary["area_m2_per_class"].items():
            print(f"  {padded(name, 24)} {area / 1e4:12.3f} ha")
        print(f"  summary   {Path(args.out) / 'batch_summary.json'}")
    return EXIT_FAILURES if summary["failed"] else 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register `segment-batch` on the `farslip` parser."""
    p = commands.add_parser("segment-batch", help="segment many rasters (or a huge one), in-process or on Ray",
                            description="Segment many rasters by typed class names: per input exactly what "
                                        "`segment` writes, plus a VRT mosaic, a merged GeoPackage and "
                                        "batch_summary.json. Reruns resume.")
    p.add_argument("inputs", nargs="+", help="rasters, globs, GDAL paths (/vsis3/...), VRTs, or .txt lists of them")
    p.add_argument("--classes", required=True,
                   help="'building,roof; road; tree' (';' between classes, ',' between synonyms), @file.txt, or "
                        "@SITE.classes.json (classes taught from labels: farslip classes learn)")
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--ray", metavar="auto|local|ADDRESS",
                   help="run on Ray: local (start one here), auto (join the running cluster) or an address")
    p.add_argument("--workers", type=int, help="model actors (default: one per GPU, else one per CPU)")
    p.add_argument("--bands", help="three 1-based band numbers for R,G,B (default: from colour interpretation)")
    p.add_argument("--gsd", type=float, help="working resolution in metres per pixel (default: max(native, 0.5))")
    add_output_arguments(p, "working-grid block size in pixels (the unit of work; default 1024)")
    add_model_arguments(p)
    add_inference_arguments(p)
    p.set_defaults(func=_cmd_segment_batch)
