"""A real FarSLIP engine for plugin tests: `farslip serve` from the engine env, tiny checkpoint."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENGINE_PYTHON = os.environ.get("FARSLIP_ENGINE_PYTHON", str(ROOT / ".venv" / "bin" / "python"))

_MAKE_FIXTURES = """
import sys, torch
from tests.engine.conftest import make_clip
from tests.engine.rasters import scene, write_raster
from pathlib import Path
folder = Path(sys.argv[1])
torch.save({"epoch": 1, "name": "tiny", "state_dict": make_clip().state_dict()}, folder / "tiny.pt")
for name, h, w in [("small", 240, 320), ("large", 1600, 1600)]:
    write_raster(folder / f"{name}.tif", scene(h, w)[0])
"""


def make_fixtures(folder: Path) -> None:
    """Checkpoint and rasters written by the engine env (the QGIS env has no torch or rasterio)."""
    subprocess.run([ENGINE_PYTHON, "-c", _MAKE_FIXTURES, str(folder)], cwd=ROOT, check=True, timeout=300)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_ON_FAKE_HUB = ("import sys; from tests.fake_hub import point_hub_at; point_hub_at(sys.argv[1], sys.argv[2]); "
                "from engine.cli import main; sys.exit(main(sys.argv[3:]))")


def engine_argv(hub: tuple[str, Path] | None = None) -> list[str]:
    """The engine's command line (`farslip`), whose huggingface_hub downloads from a fake Hub
    (tests/fake_hub.py) into a cache of the test's with `hub=(url, cache)`."""
    if hub is None:
        return [ENGINE_PYTHON, "-m", "engine.cli"]
    return [ENGINE_PYTHON, "-c", _ON_FAKE_HUB, hub[0], str(hub[1])]


class EngineProcess:
    """`farslip serve` on a free port; offline, or with `hub=(url, cache)` downloading from a fake Hub."""

    def __init__(self, folder: Path, hub: tuple[str, Path] | None = None, data: str = "data"):
        """`data`: the data folder's name in `folder`; a second engine beside a running one needs its own
        (an engine refuses a data folder another one serves)."""
        self.folder, self.data = folder, folder / data
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "FARSLIP_CONFIG_DIR": str(folder / "config"), "HF_HUB_OFFLINE": "1"}
        self.hub = hub
        self.proc = None

    def start(self) -> "EngineProcess":
        self.proc = subprocess.Popen(
            [*engine_argv(self.hub), "serve", "--port", str(self.port), "--data-dir", str(self.data),
             "--allow-root", str(self.folder), "--model", str(self.folder / "tiny.pt"), "--arch", "tiny-vit-16",
             "--device", "cpu"], cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL,
            stderr=open(self.folder / "engine.log", "ab"))
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.url}/v1/health", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        else:
            raise RuntimeError((self.folder / "engine.log").read_text())
        self.token = (self.folder / "config" / "token").read_text().strip()
        return self

    def jobs(self) -> list[dict]:
        req = urllib.request.Request(f"{self.url}/v1/jobs", headers={"Authorization": f"Bearer {self.token}"})
        return json.loads(urllib.request.urlopen(req, timeout=10).read())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
