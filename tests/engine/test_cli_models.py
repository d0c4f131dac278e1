"""`farslip models` lists, verifies and explains what it cannot download."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.engine.conftest import TINY, make_clip
from tests.engine.rasters import scene, write_raster

ROOT = Path(__file__).resolve().parents[2]


def farslip(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=120)


def test_models_list_shows_the_four_releases(tmp_path):
    out = farslip("models", "list", env={"HF_HUB_CACHE": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    for name in ("farslip1-vit-b-16", "farslip1-vit-b-32", "farslip2-vit-b-16", "farslip2-vit-b-32"):
        assert name in out.stdout


def test_models_verify_a_local_long_clip_file(tmp_path):
    path = tmp_path / "FarSLIP2_tiny.pt"
    torch.save({"epoch": 10, "name": "x", "state_dict": make_clip(long_clip=True).state_dict()}, path)
    out = farslip("models", "verify", str(path), "--arch", TINY)
    assert out.returncode == 0, out.stderr
    assert "OK" in out.stdout and "long_clip=yes" in out.stdout and "context=248" in out.stdout


def test_offline_download_fails_with_one_line(tmp_path):
    out = farslip("models", "download", "farslip2-vit-b-16", env={"HF_HUB_CACHE": str(tmp_path)})
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("farslip: error:")
    assert "--model /path/to/FarSLIP2_ViT-B-16.pt --arch ViT-B-16" in lines[0]


def test_broken_file_fails_with_one_line(tmp_path):
    path = tmp_path / "broken.pt"
    path.write_bytes(b"\x00garbage")
    out = farslip("models", "verify", str(path), "--arch", TINY)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("farslip: error: broken.pt is not a readable checkpoint")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_a_device_from_the_environment_is_named_in_its_error(tmp_path):
    model = tmp_path / "tiny.pt"
    torch.save(make_clip().state_dict(), model)
    raster = write_raster(tmp_path / "in.tif", scene(64, 64, seed=0)[0])
    run = ("segment", str(raster), "--classes", "a; b", "-o", str(tmp_path / "out"), "--model", str(model),
           "--arch", TINY)
    out = farslip(*run, env={"FARSLIP_DEVICE": "cuda"})
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert "FARSLIP_DEVICE=cuda asked for, but torch sees no CUDA GPU" in lines[0]
    out = farslip(*run, env={"FARSLIP_DEVICE": "tpu"})
    assert out.returncode == 2 and "unknown FARSLIP_DEVICE=tpu" in out.stderr
    out = farslip(*run, "--device", "cuda:0", env={"FARSLIP_DEVICE": "cpu"})
    assert out.returncode == 2 and "device 'cuda:0' asked for" in out.stderr
