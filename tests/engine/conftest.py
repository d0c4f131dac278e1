"""Fixtures for engine tests: tiny FarSLIP networks and checkpoints written in the release layouts, the
API test client, and a local HTTP listener that counts the requests the engine must not make."""

from __future__ import annotations

import http.server
import threading

import pytest
import torch

from engine.models import wrap_model
from engine.models.clip import build_clip

torch.set_num_threads(2)

TINY = "tiny-vit-16"


def make_clip(arch: str = TINY, long_clip: bool = False, seed: int = 0):
    """A tiny network with random but deterministic weights (all parameters non-trivial)."""
    torch.manual_seed(seed)
    clip = build_clip(arch, long_clip=long_clip)
    with torch.no_grad():  # open_clip leaves some tensors at zero/one; make every weight informative
        for name, param in clip.named_parameters():
            if name.endswith("logit_scale"):
                continue
            param.add_(torch.randn_like(param) * 0.02)
    return clip.eval()


@pytest.fixture(scope="session")
def tiny_clip():
    return make_clip()


@pytest.fixture(scope="session")
def tiny_model(tiny_clip):
    return wrap_model(tiny_clip, TINY, name="tiny", device="cpu")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny network's checkpoint in the training code's release layout, written once per test module."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save({"epoch": 1, "name": "tiny", "state_dict": make_clip().state_dict()}, path)
    return path


@pytest.fixture
def root(tmp_path):
    """The folder an API test's engine serves (its --allow-root)."""
    return tmp_path


@pytest.fixture
def client(root):
    """A TestClient of an engine serving `root` with a tiny default model (tests.engine.api_helpers)."""
    from fastapi.testclient import TestClient

    from tests.engine.api_helpers import make_app

    with TestClient(make_app(root)) as c:
        yield c


@pytest.fixture
def listener():
    """A local HTTP server counting the requests it gets (the engine must make none)."""
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            self.send_response(404)
            self.end_headers()

        do_HEAD = do_GET  # noqa: N815

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", hits
    server.shutdown()
