"""`farslip segment`: segment a raster by typed class names into geo-referenced outputs.

    farslip segment ortho.tif --classes "building,roof; road; tree,forest; water; grass" -o out/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine import config
from engine.errors import InputError


def class_spec(text: str) -> str:
    """The class list a command line names: the text itself, the classes of `@file`, or
    `@/absolute/SITE.classes.json` (classes taught from labels, read when the run is checked)."""
    from engine.dense import PromptSet
    from engine.taught_format import is_taught_file

    if is_taught_file(text):
        return "@" + str(config.user_path(text[1:]).absolute())
    return PromptSet.from_file(text[1:]).as_text() if text.startswith("@") else text


def _classes(text: str):
    """The classes a command line names: `--classes` text, `@file.txt` or `@SITE.classes.json`."""
    from engine.job import read_run_classes

    return read_run_classes(class_spec(text))


def segment_settings(args: argparse.Namespace):
    """The run's settings from `segment`/`segment-batch` arguments, validated by the same model as an
    API job (`engine.job.SegmentSettings`): a bad value is one line naming its option."""
    from engine.geo.bands import parse_bands
    from engine.geo.source import parse_numbers, parse_window
    from engine.job import SegmentSettings

    bands = parse_bands(args.bands)
    window = getattr(args, "window", None)
    bbox = getattr(args, "bbox", None)
    return SegmentSettings.from_fields(
        classes=class_spec(args.classes), model=args.model, arch=args.arch, bands=list(bands) if bands else None,
        gsd=args.gsd, window=list(parse_window(window)) if window else None,
        bbox=list(parse_numbers(bbox, 4, "--bbox")) if bbox else None, bbox_crs=getattr(args, "bbox_crs", None),
        preset=args.preset, threshold=args.threshold, background=args.background, global_bias=args.global_bias,
        upsampler=args.upsampler, scores=args.scores, polygons=not args.no_polygons, min_area=args.min_area,
        simplify=args.simplify, block=args.block, nodata=args.nodata)


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=config.DEFAULT_MODEL,
                   help=f"release name or checkpoint file (default {config.DEFAULT_MODEL})")
    p.add_argument("--arch", help="architecture of a local checkpoint file (guessed when omitted)")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--precision", default=None, help="auto (fp16 on GPU, fp32 on CPU), fp32, fp16, bf16")


def add_output_arguments(p: argparse.ArgumentParser, block_help: str) -> None:
    """What `segment` writes besides the class map (shared with `segment-batch`)."""
    p.add_argument("--scores", action="store_true", help="also write per-class probabilities (uint8 COG)")
    p.add_argument("--no-polygons", action="store_true", help="skip the polygon GeoPackages")
    p.add_argument("--min-area", type=float, default=0.0, help="drop polygons smaller than this many m²")
    p.add_argument("--simplify", type=float, default=1.0,
                   help="polygon simplification tolerance in working pixels (a coarser --gsd: several source px)")
    p.add_argument("--block", type=int, help=block_help)
    add_nodata_argument(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or report")


def add_nodata_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nodata", type=float, metavar="VALUE",
                   help="a value that is no data where every chosen band holds it (e.g. 0 for a black border the "
                        "file does not declare); NaN, masks and the file's own nodata are always no data")


def add_inference_arguments(p: argparse.ArgumentParser) -> None:
    from engine.dense.options import DEFAULT_PRESET, PRESETS

    p.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(PRESETS), help="inference preset")
    p.add_argument("--threshold", type=float, help="class probability below which a pixel is background")
    p.add_argument("--background", help="background class name (added to the classes when missing)")
    p.add_argument("--global-bias", type=float, help="λ of the global-bias subtraction (0 = off)")
    p.add_argument("--batch-size", type=int,
                   help="crops per forward pass (default: on a GPU as many as half its free memory holds, at "
                        "most 256; 4 on a CPU)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the network first (10-20 s on a GPU, then ~25%% more crops/s: for large "
                        "rasters, not a quick look)")
    p.add_argument("--upsampler", metavar="PATH",
                   help="learned feature up-sampler weights (SegEarth-OV's SimFeatUp JBU .ckpt, or "
                        "hf://owner/repo/file); default: none (bilinear logits)")


def inference_options(settings, args: argparse.Namespace):
    """The settings' inference options plus what only this machine decides (batch size, compile)."""
    return settings.inference_options(batch_size=args.batch_size, compile=args.compile or None)


def _cmd_segment(args: argparse.Namespace) -> int:
    settings = segment_settings(args)
    options = inference_options(settings, args)
    # Check the input and the output folder before spending time on loading torch and the model (the
    # pixels are inspected by the run itself: its notes on them are printed at the end).
    with settings.open_source(args.input, inspect_pixels=False) as source:
        source.probe()
        print_notes(source.notes)
        said = set(source.notes)
        gsd_note = (f"{source.working_gsd:.3g} m/px" if source.working_gsd else "native pixels")
    _check_writable(Path(args.out))

    from engine.dense import Segmenter
    from engine.geo.pipeline import check_outputs, output_paths, segment_raster
    from engine.models import load_model

    job = settings.raster_job(args.input, args.out, args.name, overwrite=args.overwrite)
    check_outputs(job)  # before a model is fetched and loaded (the run checks again)

    model = load_model(args.model, arch=args.arch, device=args.device, precision=args.precision)
    segmenter = Segmenter(model, settings.prompts, options)
    bar, progress = progress_bar(args.quiet, f"segment {Path(args.input).name} @ {gsd_note}")
    try:
        summary = segment_raster(job, segmenter, progress=progress)
    finally:
        bar.close()
    print_notes([note for note in summary["notes"] if note not in said])
    if not args.quiet:
        for c in summary["classes"]:
            area = f"{c['area_m2'] / 1e4:10.3f} ha" if c["area_m2"] is not None else ""
            print(f"  {padded(c['name'], 24)} {c['pixels']:>12} px {area}")
        for key, path in output_paths(job).items():
            print(f"  {key:<9} {path}")
    return 0


def padded(text: str, width: int) -> str:
    """`text` padded with spaces to `width` terminal columns (f"{text:<24}" counts characters: a CJK
    character takes two columns, a combining accent none, and the table's columns drifted)."""
    import unicodedata

    columns = sum(0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) in "WF" else 1
                  for ch in text)
    return text + " " * max(0, width - columns)


def print_notes(notes: list[str]) -> None:
    """The choices the engine made for a raster (bands guessed, a nodata frame suspected), one line each."""
    for note in notes:
        kind, text = ("warning", note.removeprefix("warning: ")) if note.startswith("warning:") else ("note", note)
        print(f"farslip: {kind}: {text}", file=sys.stderr)


def output_stem(value: str) -> str:
    """`--name`: a file name stem, never a path (the outputs stay in the output folder)."""
    if not value.strip() or value in (".", "..") or any(c in value for c in "/\\\0"):
        raise argparse.ArgumentTypeError(f"{value!r} must be a file name without folders "
                                         f"(the outputs go to the output folder, -o)")
    return value


def progress_bar(quiet: bool, label: str, unit: str = "crop"):
    """A tqdm bar (crops/s, or other `unit`s) and the (done, total) callback that drives it."""
    from tqdm import tqdm

    bar = tqdm(total=None, unit=unit, desc=label, disable=quiet, dynamic_ncols=True, delay=0.5)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    return bar, progress


def _check_writable(out: Path) -> None:
    import tempfile

    from engine.geo.workdirs import check_output_folder

    check_output_folder(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".farslip-check-"):
            pass
    except OSError as exc:
        raise InputError(f"cannot write to output folder {out}: {exc.strerror or exc}") from None


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register segmentation sub-commands on the `farslip` parser."""
    p = commands.add_parser("segment", help="segment a raster (GeoTIFF, COG, any GDAL raster) by class names",
                            description="Segment a raster by typed class names into a class COG, optional "
                                        "score COG, polygons (GeoPackage) and a JSON summary.")
    p.add_argument("input", help="raster file (or GDAL path such as /vsicurl/...)")
    p.add_argument("--classes", required=True,
                   help="'building,roof; road; tree' (';' between classes, ',' between synonyms), @file.txt, or "
                        "@SITE.classes.json (classes taught from labels: farslip classes learn)")
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--name", type=output_stem, help="output file stem (default: the input's)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier run's outputs of the same name in the output folder (else refused)")
    p.add_argument("--bands", help="three 1-based band numbers for R,G,B, e.g. 3,2,1 (default: from colour "
                                   "interpretation, else 1,2,3)")
    p.add_argument("--gsd", type=float, help="working resolution in metres per pixel (default: max(native, 0.5))")
    p.add_argument("--bbox", help="minx,miny,maxx,maxy to process (raster CRS unless --bbox-crs)")
    p.add_argument("--bbox-crs", help="CRS of --bbox, e.g. EPSG:4326")
    p.add_argument("--window", help="col,row,width,height in source pixels to process")
    add_output_arguments(p, "working-grid block size in pixels (memory bound; default 1024 on a CPU, 2048 on a GPU)")
    add_model_arguments(p)
    add_inference_arguments(p)
    p.set_defaults(func=_cmd_segment)
