"""`farslip classify` and `farslip search`: image-level classification and text search over a raster.

    farslip classify ortho.tif --classes "residential; industrial; forest; farmland" --cell 100 -o out/
    farslip classify ortho.tif --classes "car; truck; ship" --regions boxes.gpkg -o out/
    farslip search ortho.tif --query "a swimming pool next to a house" --top-k 10 -o out/
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from engine.errors import InputError, first_line


def _area_args(args) -> dict:
    from engine.geo.bands import parse_bands
    from engine.geo.source import parse_numbers, parse_window

    return {"bands": parse_bands(args.bands),
            "window": parse_window(args.window) if args.window else None,
            "bbox": parse_numbers(args.bbox, 4, "--bbox") if args.bbox else None, "bbox_crs": args.bbox_crs,
            "nodata": args.nodata}


def _cmd_classify(args: argparse.Namespace) -> int:
    from engine.cli_segment import _check_writable, _classes, padded, print_notes, progress_bar
    from engine.geo.source import RasterSource

    prompts = _classes(args.classes)
    area = _area_args(args)
    if (args.cell is None) == (args.regions is None) and args.cell_px is None:
        raise InputError("give either --cell METRES (a grid) or --regions FILE (regions to label)")
    if args.regions and not Path(args.regions).exists():
        raise InputError(f"regions file not found: {args.regions}")
    with RasterSource(args.input, inspect_pixels=False, **area) as source:  # opened once for both checks
        source.probe()
        if not args.regions:  # a cell size this raster cannot take: said before the model loads
            from engine.geo.scenes import cell_size_px

            cell_size_px(source, args.cell, args.cell_px)
    _check_writable(Path(args.out))
    from engine.dense.scenes import SceneClassifier  # the network code, once the arguments are checked
    from engine.geo.pipeline import check_new_outputs
    from engine.models import load_model

    from engine.geo.scenes import GridJob, classify_grid, grid_paths

    job = GridJob(args.input, args.out, cell_m=args.cell, cell_px=args.cell_px, name=args.name, **area)
    check_new_outputs([_labels_path(args)] if args.regions else grid_paths(job).values(),
                      [args.input, args.regions] if args.regions else [args.input], args.overwrite)
    model = load_model(args.model, arch=args.arch, device=args.device, precision=args.precision)
    classifier = SceneClassifier(model, prompts, template_set=args.templates)
    if args.regions:
        return _label_file(args, classifier, area)
    bar, progress = progress_bar(args.quiet, f"classify {Path(args.input).name}", unit="cell")
    try:
        summary = classify_grid(job, classifier, progress=progress)
    finally:
        bar.close()
    print_notes(summary["notes"])
    if not args.quiet:
        for c in summary["classes"]:
            print(f"  {padded(c['name'], 24)} {c['cells']:>8} cells")
        for key, path in grid_paths(job).items():
            print(f"  {key:<9} {path}")
    return 0


def _label_file(args, classifier, area) -> int:
    """Label every polygon of a vector file; write them back with class, score, probabilities and
    valid_fraction (a region under half valid: class, score and probabilities null)."""
    import numpy as np
    import shapely
    from pyogrio.raw import read

    from engine.cli_segment import padded
    from engine.geo.regions import Region
    from engine.geo.scenes import label_regions
    from engine.geo.source import RasterSource
    from engine.geo.vectors import write_features

    try:
        meta, _, wkb, columns = read(args.regions)
    except Exception as exc:
        raise InputError(f"cannot read regions from {args.regions}: {first_line(exc)}") from None
    geoms = list(shapely.from_wkb(wkb))
    if not geoms:
        raise InputError(f"{args.regions} holds no features")
    regions = []
    for geom in geoms:
        poly = max(getattr(geom, "geoms", [geom]), key=lambda g: g.area)
        regions.append(Region(polygon=tuple(poly.exterior.coords)))
    crs = meta.get("crs") if isinstance(meta, dict) else None
    with RasterSource(args.input, **area) as source:
        # a file without CRS is in the raster's own frame: its geotransform, or QGIS's pixel frame
        # (x = column, y = -row) for a raster without one, as the regions were drawn over it
        labels = label_regions(source, regions, classifier, crs=crs)
        out = _labels_path(args)
        ours = {"class": np.array([lb["best"] for lb in labels], dtype=object),
                "score": np.array([np.nan if lb["score"] is None else lb["score"] for lb in labels]),
                "probabilities": np.array([None if lb["probabilities"] is None else json.dumps(lb["probabilities"])
                                           for lb in labels], dtype=object),
                "valid_fraction": np.array([lb["valid_fraction"] for lb in labels])}
        # the input's own attributes first, so results join back (a clashing name gets an "input_" prefix)
        fields = {(f"input_{name}" if name in ours else name): values
                  for name, values in zip(meta["fields"], columns)}
        fields.update(ours)
        from engine.geo.crs_text import parse_crs
        from engine.geo.workdirs import moving, publish_together, work_folder

        with work_folder(out.parent) as work:  # a full disk: one line, no partial file left
            write_features(work / "labels.gpkg", geoms, fields,
                           parse_crs(crs, f"the CRS of {args.regions}") if crs else source.crs, "labels")
            publish_together(work, [moving(work / "labels.gpkg", out)])  # (an earlier file: back on failure)
    if not args.quiet:
        for lb in labels[:20]:
            if lb["best"] is None:
                print(f"  region {lb['index']:<5} {'(no data)':<24} -      valid {lb['valid_fraction']:.0%}")
            else:
                print(f"  region {lb['index']:<5} {padded(lb['best'], 24)} {lb['score']:.3f}  valid {lb['valid_fraction']:.0%}")
        print(f"  labels    {out}")
    return 0


def _labels_path(args) -> Path:
    return Path(args.out) / f"{args.name or Path(args.regions).stem}_labels.gpkg"


def _cmd_search(args: argparse.Namespace) -> int:
    from engine.cli_segment import _check_writable, print_notes, progress_bar
    from engine.dense.prompts import query_prompts
    from engine.geo.source import probe_area

    query_prompts(args.query)
    if not 1 <= args.top_k <= 1000:
        raise InputError("--top-k must be between 1 and 1000")
    area = _area_args(args)
    probe_area(args.input, gsd=args.gsd, **area)
    _check_writable(Path(args.out))
    from engine.geo.pipeline import check_new_outputs
    from engine.geo.search import SearchJob, search_paths, search_raster  # the network code, once checked
    from engine.models import load_model

    job = SearchJob(args.input, args.out, query=args.query, top_k=args.top_k, gsd=args.gsd,
                    heatmap=not args.no_heatmap, name=args.name, **area)
    every_output = search_paths(dataclasses.replace(job, heatmap=True)).values()
    check_new_outputs(every_output, [args.input], args.overwrite)
    model = load_model(args.model, arch=args.arch, device=args.device, precision=args.precision)
    bar, progress = progress_bar(args.quiet, f"search {Path(args.input).name}")
    try:
        summary = search_raster(job, model, progress=progress)
    finally:
        bar.close()
    for earlier in set(every_output) - set(search_paths(job).values()):  # a heat map of an earlier run
        earlier.unlink(missing_ok=True)
    print_notes(summary["notes"])
    if not args.quiet:
        for box in summary["boxes"]:
            print(f"  #{box['rank']:<3} score {box['score']:.3f}  bounds {', '.join(f'{v:.2f}' for v in box['bounds'])}")
        for key, path in search_paths(job).items():
            print(f"  {key:<9} {path}")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    from engine.cli_segment import add_model_arguments, add_nodata_argument, output_stem

    p.add_argument("input", help="raster file")
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--name", type=output_stem, help="output file stem (default: the input's)")
    p.add_argument("--bands", help="three 1-based band numbers for R,G,B")
    p.add_argument("--bbox", help="minx,miny,maxx,maxy (raster CRS unless --bbox-crs)")
    p.add_argument("--bbox-crs", help="CRS of --bbox, e.g. EPSG:4326")
    p.add_argument("--window", help="col,row,width,height in source pixels")
    add_nodata_argument(p)
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier run's outputs of the same name in the output folder (else refused)")
    p.add_argument("-q", "--quiet", action="store_true")
    add_model_arguments(p)


def add_commands(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("classify", help="classify a raster's grid cells, or given regions, by class names")
    _common(p)
    p.add_argument("--classes", required=True, help="'residential; forest,woodland; farmland', @file.txt, or "
                                                    "@SITE.classes.json (classes taught from labels: each cell's class "
                                                    "is then the mean of its segmentation)")
    p.add_argument("--cell", type=float, help="grid cell size in metres")
    p.add_argument("--cell-px", type=float, help="grid cell size in pixels (rasters without CRS)")
    p.add_argument("--regions", help="vector file (GeoPackage, shapefile, GeoJSON) of regions to label")
    p.add_argument("--templates", default="rs", choices=["rs", "imagenet80", "name", "region"],
                   help="prompt templates (taught classes use those they were made with)")
    p.set_defaults(func=_cmd_classify)
    p = commands.add_parser("search", help="search a raster by free text: heat map and top-k boxes")
    _common(p)
    p.add_argument("--query", required=True, help="e.g. 'a swimming pool next to a house'")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--gsd", type=float, help="working resolution in metres per pixel")
    p.add_argument("--no-heatmap", action="store_true", help="only the boxes (much faster)")
    p.set_defaults(func=_cmd_search)
