"""The learned feature up-sampler option (SimFeatUp JBU): released checkpoint layout, strict loading
with clear errors, spatial behaviour, and its use through `segment`, the dense path and the API."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
from fastapi.testclient import TestClient

from engine.cli import main
from engine.dense import InferenceOptions, Segmenter, segment_image
from engine.dense.jbu import JBUUpsampler
from engine.dense.upsampler import load_upsampler, parse_hub_spec
from engine.errors import InputError, ModelError
from tests.engine.api_helpers import AUTH, make_app, wait_for
from tests.engine.conftest import TINY
from tests.engine.jbu_checkpoints import random_state, released_shapes, write_released
from tests.engine.rasters import scene, write_raster

TINY_DIM = 32
CLASSES = "water,river; grass; building,roof; road"


@pytest.fixture(scope="module")
def jbu_one(tmp_path_factory):
    return write_released(tmp_path_factory.mktemp("jbu") / "jbu_one.ckpt", random_state(TINY_DIM, "jbu_one"))


@pytest.mark.parametrize("kind", ["jbu_one", "jbu_stack"])
def test_released_layout_loads_strictly_with_kind_and_size_read_from_the_file(tmp_path, kind):
    state = random_state(TINY_DIM, kind, seed=3)
    module = load_upsampler(str(write_released(tmp_path / "w.ckpt", state)), TINY_DIM)
    assert module.kind == kind and module.feat_dim == TINY_DIM and not module.training
    loaded = module.state_dict()
    assert set(loaded) == set(released_shapes(TINY_DIM, kind))
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    # a plain state dict, without the Lightning wrapper or the prefix, is the same weights
    torch.save(state, tmp_path / "plain.pt")
    plain = load_upsampler(str(tmp_path / "plain.pt"), TINY_DIM).state_dict()
    assert all(torch.equal(plain[k], loaded[k]) for k in loaded)


def test_wrong_size_keys_or_format_give_one_clear_input_error(tmp_path):
    good = random_state(TINY_DIM)
    with pytest.raises(InputError, match="up-samples 64-d features but the model's patch features are 32-d"):
        load_upsampler(str(write_released(tmp_path / "d64.ckpt", random_state(64))), TINY_DIM)
    bad = dict(good)
    del bad["up.sigma_spatial"]
    bad["up.extra.weight"] = torch.zeros(3)
    bad["up.range_proj.3.bias"] = torch.zeros(7)
    with pytest.raises(InputError) as err:
        load_upsampler(str(write_released(tmp_path / "keys.ckpt", bad)), TINY_DIM)
    message = str(err.value)
    assert "1 missing: up.sigma_spatial" in message and "1 unexpected: up.extra.weight" in message
    assert "1 wrong shape: up.range_proj.3.bias" in message and "\n" not in message
    with pytest.raises(InputError, match="not a JBU up-sampler"):
        load_upsampler(str(write_released(tmp_path / "other.ckpt", {"conv.weight": torch.zeros(2)})), TINY_DIM)
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(InputError, match="not a readable checkpoint"):
        load_upsampler(str(tmp_path / "junk.ckpt"), TINY_DIM)
    with pytest.raises(InputError, match="up-sampler weights not found"):
        InferenceOptions(upsampler=str(tmp_path / "missing.ckpt")).validate()


def test_hub_specs_are_parsed_and_offline_misses_say_what_to_do():
    assert parse_hub_spec("hf://me/repo/sub/w.ckpt") == ("me/repo", "sub/w.ckpt")
    assert parse_hub_spec("/data/w.ckpt") is None
    with pytest.raises(InputError, match="hf://owner/repo/path"):
        parse_hub_spec("hf://me/w.ckpt")
    with pytest.raises(ModelError, match="up-sampler hf://me/repo/w.ckpt: HF_HUB_OFFLINE is set"):
        load_upsampler("hf://me/repo/w.ckpt", TINY_DIM, offline=True)


def _module(kind: str, seed: int = 0, zero_fixups: bool = False) -> JBUUpsampler:
    state = random_state(TINY_DIM, kind, seed)
    if zero_fixups:  # kernels then sum to one and the output projection is off
        state = {k: torch.zeros_like(v) if ("fixup_proj.3" in k or "fixup_proj.1" in k) else v
                 for k, v in state.items()}
    module = JBUUpsampler(TINY_DIM, kind)
    module.load_state_dict(state, strict=True)
    return module.eval()


@pytest.mark.parametrize("kind", ["jbu_one", "jbu_stack"])
def test_a_constant_feature_map_up_samples_to_the_same_constant(kind):
    torch.manual_seed(0)
    values = torch.randn(1, TINY_DIM, 1, 1)
    features = values.expand(1, TINY_DIM, 3, 4)
    image = torch.randn(1, 3, 48, 64)  # any guidance
    with torch.no_grad():
        out = _module(kind, zero_fixups=True)(features, image)
    assert out.shape == (1, TINY_DIM, 48, 64)
    torch.testing.assert_close(out, values.expand_as(out), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["jbu_one", "jbu_stack"])
def test_layout_is_kept_each_quadrant_stays_where_it_was(kind):
    """Features that differ by quadrant (one channel each), up-sampled 16×: no transposition or flip;
    with random weights the learned kernels may move edges (the range term favours some colours), so
    each quadrant is checked in its corner; with flat guidance and symmetric kernels (no fix-up
    terms) the edges stay on the grid lines."""
    features = torch.zeros(1, TINY_DIM, 4, 6)
    features[0, 0, :2, :3] = features[0, 1, :2, 3:] = features[0, 2, 2:, :3] = features[0, 3, 2:, 3:] = 1.0
    edges = torch.zeros(1, 3, 64, 96)
    edges[:, 0, :32] = 1.0
    edges[:, 1, :, :48] = 1.0
    for module, image, margin in ((_module(kind, seed=1), edges, 24), (_module(kind, zero_fixups=True),
                                                                       torch.zeros(1, 3, 64, 96), 4)):
        with torch.no_grad():
            winner = module(features, image)[0, :4].argmax(0)
        for channel, (ys, xs) in enumerate([(slice(0, 32 - margin), slice(0, 48 - margin)),
                                            (slice(0, 32 - margin), slice(48 + margin, 96)),
                                            (slice(32 + margin, 64), slice(0, 48 - margin)),
                                            (slice(32 + margin, 64), slice(48 + margin, 96))]):
            assert bool((winner[ys, xs] == channel).all()), f"quadrant {channel} moved (margin {margin})"


@pytest.mark.parametrize("kind", ["jbu_one", "jbu_stack"])
def test_cosine_on_the_reduced_basis_equals_normalising_the_up_sampled_features(kind):
    """More channels than grid cells (as ViT-B/16: 512 > 196) takes the exact low-rank route."""
    dim = 64
    module = JBUUpsampler(dim, kind).eval()
    module.load_state_dict(random_state(dim, kind, seed=2), strict=True)
    torch.manual_seed(1)
    features, image = torch.randn(2, dim, 4, 6), torch.randn(2, 3, 64, 96)
    text = torch.nn.functional.normalize(torch.randn(5, dim), dim=1)
    with torch.no_grad():
        direct = torch.einsum("bdhw,nd->bnhw", torch.nn.functional.normalize(module(features, image), dim=1), text)
        reduced = module.cosine(features, image, text)
    assert reduced.shape == (2, 5, 64, 96)
    torch.testing.assert_close(reduced, direct, atol=2e-5, rtol=1e-4)


def test_segment_image_with_the_upsampler_differs_and_keeps_shapes(tiny_model, jbu_one):
    image = scene(120, 200)[0].transpose(1, 2, 0)  # one crop, smaller than the model's input
    plain = segment_image(image, CLASSES, tiny_model)
    guided = segment_image(image, CLASSES, tiny_model, InferenceOptions(upsampler=str(jbu_one)))
    assert guided.class_map.shape == plain.class_map.shape == (120, 200)
    assert guided.scores.shape == plain.scores.shape == (4, 120, 200)
    assert not np.allclose(guided.scores, plain.scores, atol=1e-4)


def test_the_crop_must_leave_a_grid_the_window_fits(tiny_model, jbu_one):
    with pytest.raises(InputError, match="too small for the up-sampler"):
        Segmenter(tiny_model, CLASSES, InferenceOptions(crop=32, upsampler=str(jbu_one)))


def _run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, err


def test_segment_cli_with_upsampler_keeps_the_geo_reference_and_changes_the_scores(tmp_path, capsys, checkpoint,
                                                                                   jbu_one):
    src = write_raster(tmp_path / "in.tif", scene(180, 240)[0])
    common = ["--classes", CLASSES, "--scores", "--no-polygons", "--model", str(checkpoint), "--arch", TINY, "-q"]
    assert _run(capsys, "segment", str(src), "-o", str(tmp_path / "plain"), *common)[0] == 0
    code, err = _run(capsys, "segment", str(src), "-o", str(tmp_path / "jbu"), "--upsampler", str(jbu_one), *common)
    assert code == 0, err
    with rasterio.open(src) as s, rasterio.open(tmp_path / "jbu" / "in_classes.tif") as c, \
            rasterio.open(tmp_path / "jbu" / "in_scores.tif") as guided, \
            rasterio.open(tmp_path / "plain" / "in_scores.tif") as plain:
        assert c.crs == s.crs and c.transform.almost_equals(s.transform) and (c.width, c.height) == (240, 180)
        assert not np.array_equal(guided.read(), plain.read())


def test_segment_cli_refuses_a_wrong_checkpoint_in_one_line(tmp_path, capsys, checkpoint):
    src = write_raster(tmp_path / "in.tif", scene(64, 64)[0])
    wrong = write_released(tmp_path / "d512.ckpt", random_state(512, "jbu_stack"))
    for weights, message in ((wrong, "512-d features"), (tmp_path / "none.ckpt", "up-sampler weights not found")):
        code, err = _run(capsys, "segment", str(src), "--classes", "a; b", "-o", str(tmp_path / "out"),
                         "--model", str(checkpoint), "--arch", TINY, "-q", "--upsampler", str(weights))
        lines = err.strip().splitlines()
        assert code != 0 and len(lines) == 1 and lines[0].startswith("farslip: error:") and message in lines[0], err


def test_api_runs_with_an_upsampler_and_refuses_bad_ones_with_4xx(tmp_path, tmp_path_factory):
    root = tmp_path
    src = write_raster(root / "in.tif", scene(120, 140)[0])
    good = write_released(root / "jbu.ckpt", random_state(TINY_DIM))
    wrong_dim = write_released(root / "d64.ckpt", random_state(64))
    broken = random_state(TINY_DIM)
    del broken["fixup_proj.1.bias"]
    wrong_keys = write_released(root / "keys.ckpt", broken)
    outside = write_released(tmp_path_factory.mktemp("elsewhere") / "jbu.ckpt", random_state(TINY_DIM))
    with TestClient(make_app(root)) as client:
        def post(weights):
            return client.post("/v1/jobs/segment", headers=AUTH, json={
                "input": {"path": str(src)}, "classes": CLASSES, "polygons": False, "upsampler": str(weights)})

        for weights, code, message in ((wrong_dim, 400, "64-d features"), (wrong_keys, 400, "missing: fixup_proj.1.bias"),
                                       (root / "none.ckpt", 404, "not found"), (outside, 403, "outside the folders"),
                                       ("hf://me/repo/w.ckpt", 400, "file on the engine machine")):
            got = post(weights)
            assert got.status_code == code and message in got.json()["detail"], got.text
        created = post(good)
        assert created.status_code == 202, created.text
        status = wait_for(client, created.json()["id"])
        assert status["state"] == "done", status
