"""One job model (`engine.job.SegmentSettings`) for the command line, the HTTP API and the plugin:
the same choices give the same run, and a bad value is refused in the same words everywhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.cli import build_parser, main
from engine.cli_segment import segment_settings
from engine.server.schemas import SegmentRequest
from tests.engine.rasters import scene, write_raster

ROOT = Path(__file__).resolve().parents[2]


def test_the_plugins_copy_of_the_job_schema_is_current():
    saved = json.loads((ROOT / "tests" / "plugin" / "segment_job_schema.json").read_text(encoding="utf-8"))
    assert saved == json.loads(json.dumps(SegmentRequest.model_json_schema())), \
        "run: .venv/bin/python -m engine.server.schemas > tests/plugin/segment_job_schema.json"


def test_the_command_line_and_an_api_body_make_the_same_run(tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("building, roof; road\n# a comment\ntree\n", encoding="utf-8")
    args = build_parser().parse_args(
        ["segment", "in.tif", "--classes", f"@{classes}", "-o", "out", "--gsd", "0.7", "--bbox", "1,2,30,40",
         "--bbox-crs", "EPSG:4326", "--bands", "3,2,1", "--preset", "enhanced", "--threshold", "0.3",
         "--scores", "--no-polygons", "--min-area", "5", "--block", "512", "--model", "farslip2-vit-b-32"])
    from_cli = segment_settings(args)
    from_api = SegmentRequest(input={"path": "/data/in.tif"}, classes=["building, roof", "road", "tree"], gsd=0.7,
                              bbox=[1, 2, 30, 40], bbox_crs="EPSG:4326", bands=[3, 2, 1], preset="enhanced",
                              threshold=0.3, scores=True, polygons=False, min_area=5, block=512,
                              model="farslip2-vit-b-32")
    assert from_cli.prompts == from_api.prompts
    same = from_cli.raster_job("in.tif", "out"), from_api.raster_job("in.tif", "out")
    assert same[0] == same[1]
    assert from_cli.inference_options() == from_api.inference_options()


@pytest.mark.parametrize("option, value, message", [
    ("--gsd", "-1", "--gsd: Input should be greater than 0"),
    ("--gsd", "nan", "--gsd: Input should be a finite number"),
    ("--block", "100", "--block: Input should be greater than or equal to 256"),
    ("--threshold", "1.5", "--threshold: Input should be less than 1"),
    ("--window", "0,0,0,5", "--window: Input should be greater than or equal to 1"),
    ("--bbox", "10,0,5,5", "bbox must be minx,miny,maxx,maxy with max > min"),
    ("--classes", " ; ", "--classes: no classes given"),
    ("--min-area", "-3", "--min-area: Input should be greater than or equal to 0"),
])
def test_a_bad_value_is_one_line_naming_its_option(tmp_path, capsys, option, value, message):
    src = write_raster(tmp_path / "in.tif", scene(32, 32)[0])
    argv = ["segment", str(src), "--classes", "a; b", "-o", str(tmp_path / "out"), option, value]
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"farslip: error: {message}"), lines
    assert not (tmp_path / "out").exists()  # refused before anything was made
