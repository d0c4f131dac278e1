"""Checkpoints in every release layout load, give the in-memory model's outputs, and fail clearly."""

from __future__ import annotations

import collections
import pickle
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from engine.dense.forward import dense_features
from engine.errors import ModelError
from engine.models import load_model, wrap_model
from engine.models import registry
from engine.models.clip import stretch_text_positions
from tests.engine.conftest import TINY, make_clip

TEXTS = ["a satellite image of a building", "road " * 60]  # the second is longer than 77 tokens


def _outputs(model):
    torch.manual_seed(1)
    images = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        dense = dense_features(model.clip.visual, images)
    return model.encode_text(TEXTS), model.encode_image(images), dense


def _save(state, path: Path, layout: str) -> Path:
    if layout == "plain":
        torch.save(state, path)
    elif layout == "wrapped":  # what the FarSLIP training code writes (DDP prefix included)
        torch.save({"epoch": 1, "name": "farslip", "optimizer": {"state": {}, "param_groups": []},
                    "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    elif layout == "module":
        torch.save({f"module.{k}": v for k, v in state.items()}, path)
    elif layout == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


@pytest.mark.parametrize("long_clip", [False, True], ids=["clip77", "longclip248"])
@pytest.mark.parametrize("layout", ["plain", "wrapped", "module", "safetensors"])
def test_each_release_layout_loads_with_identical_outputs(tmp_path, layout, long_clip):
    clip = make_clip(long_clip=long_clip, seed=3)
    reference = wrap_model(clip, TINY, device="cpu")
    suffix = ".safetensors" if layout == "safetensors" else ".pt"
    path = _save(clip.state_dict(), tmp_path / f"ckpt{suffix}", layout)

    loaded = load_model(str(path), arch=TINY, device="cpu")

    assert loaded.long_clip == long_clip
    assert loaded.context_length == (248 if long_clip else 77)
    # built without random initialisation: every buffer (the causal mask too) as a normal build has it
    want_buffers = dict(reference.clip.named_buffers())
    assert {n: b.shape for n, b in loaded.clip.named_buffers()} == {n: b.shape for n, b in want_buffers.items()}
    assert all(torch.equal(b, want_buffers[n]) for n, b in loaded.clip.named_buffers())
    assert all(p.requires_grad and p.dtype == torch.float32 for p in loaded.clip.parameters())
    for got, want in zip(_outputs(loaded), _outputs(reference)):
        assert torch.equal(got, want)


def test_architecture_is_guessed_from_the_weights(tmp_path):
    path = _save(make_clip(arch="tiny-vit-32").state_dict(), tmp_path / "mine.pt", "plain")
    assert load_model(str(path), device="cpu").arch == "tiny-vit-32"


def test_long_clip_uses_positions_beyond_77(tmp_path):
    model = wrap_model(make_clip(long_clip=True), TINY, device="cpu")
    base = "a satellite image of " + "farmland " * 70
    a, b = model.encode_text([base + "with a red barn", base + "with a blue lake"])
    assert not torch.allclose(a, b)  # the tokens past position 77 changed the embedding
    short = wrap_model(make_clip(long_clip=False), TINY, device="cpu")
    a, b = short.encode_text([base + "with a red barn", base + "with a blue lake"])
    assert torch.allclose(a, b)  # a 77-position tower truncates them


def test_trimmed_text_padding_gives_the_full_context_result():
    model = make_clip(long_clip=True, seed=7)
    tokens = wrap_model(model, TINY, device="cpu").tokenize(["a roof", "a long road " * 30, "water"])
    with torch.no_grad():
        trimmed = model.encode_text(tokens)
        full = super(type(model), model).encode_text  # open_clip's own text path, over all 248 positions
        model.positional_embedding.data, saved = model.text_positions().detach().clone(), model.positional_embedding.data
        try:
            reference = full(tokens)
        finally:
            model.positional_embedding.data = saved
    torch.testing.assert_close(trimmed, reference, rtol=1e-5, atol=1e-6)


def test_wrong_architecture_names_the_mismatching_keys(tmp_path):
    path = _save(make_clip(arch="tiny-vit-16").state_dict(), tmp_path / "ckpt.pt", "plain")
    with pytest.raises(ModelError, match=r"does not fit architecture tiny-vit-32: .*wrong shape: .*visual\.conv1\.weight"):
        load_model(str(path), arch="tiny-vit-32", device="cpu")


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    state = make_clip().state_dict()
    del state["visual.ln_post.weight"]
    state["extra.head.weight"] = torch.zeros(3)
    path = _save(state, tmp_path / "ckpt.pt", "wrapped")
    with pytest.raises(ModelError) as err:
        load_model(str(path), arch=TINY, device="cpu")
    message = str(err.value)
    assert "1 missing: visual.ln_post.weight" in message
    assert "1 unexpected: extra.head.weight" in message
    assert "\n" not in message


@pytest.mark.parametrize("name, content", [
    ("weights.pt", b"not a checkpoint at all"), ("weights.pt", b""), ("weights.pt", b"hello\n"),
    ("weights.pt", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4),
    ("weights.pt", pickle.dumps({"state_dict": collections.OrderedDict(a=Fraction(1, 3))})),
    ("weights.safetensors", b"{}"), ("weights.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\": 1}"),
], ids=["text", "empty", "short-text", "binary", "python-objects", "safetensors-short", "safetensors-bad-header"])
def test_a_file_that_is_no_checkpoint_gives_one_line(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ModelError, match=f"{name} is not a readable checkpoint") as err:
        load_model(str(path), arch=TINY, device="cpu")
    message = str(err.value)
    assert "\n" not in message
    assert "weights_only" not in message and "trust" not in message  # never advice to run code from a file


def test_unknown_model_lists_the_releases():
    with pytest.raises(ModelError, match="unknown model 'farslip3'.*farslip2-vit-b-16"):
        load_model("farslip3", device="cpu")


def test_unknown_architecture_is_named(tmp_path):
    path = _save(make_clip().state_dict(), tmp_path / "c.pt", "plain")
    with pytest.raises(ModelError, match="unknown architecture 'ViT-Q-7'"):
        load_model(str(path), arch="ViT-Q-7", device="cpu")


def _hub_cache_with(tmp_path: Path, repo_id: str, filename: str, state) -> Path:
    """Lay out a Hugging Face cache folder exactly as huggingface_hub writes it."""
    cache = tmp_path / "hf-cache"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    _save(state, snapshot / filename, "wrapped")
    return cache


@pytest.fixture
def tiny_release(monkeypatch):
    release = registry.Release("farslip-tiny-test", registry.HF_REPO, "FarSLIP_tiny.pt", TINY, "test release")
    monkeypatch.setitem(registry.RELEASES, release.name, release)
    return release


def test_release_name_loads_from_the_hf_cache_offline(tmp_path, monkeypatch, tiny_release):
    clip = make_clip(long_clip=True, seed=5)
    cache = _hub_cache_with(tmp_path, tiny_release.repo_id, tiny_release.filename, clip.state_dict())
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    loaded = load_model(tiny_release.name, device="cpu")

    assert Path(loaded.source).is_relative_to(cache)
    for got, want in zip(_outputs(loaded), _outputs(wrap_model(clip, TINY, device="cpu"))):
        assert torch.equal(got, want)


def test_release_missing_offline_says_how_to_pass_a_local_file(tmp_path, monkeypatch, tiny_release):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as err:
        load_model(tiny_release.name, device="cpu")
    message = str(err.value)
    assert "not in the local cache" in message
    assert f"--model /path/to/{tiny_release.filename} --arch {TINY}" in message


def test_long_clip_positions_are_stretched_from_77():
    pe = torch.randn(77, 8)
    out = stretch_text_positions(pe)
    assert out.shape == (248, 8)
    assert torch.equal(out[:20], pe[:20])
    assert torch.allclose(out[20 + 4 * 10], pe[30])  # every 4th new position is an old one
    assert torch.allclose(out[20 + 4 * 10 + 2], (pe[30] + pe[31]) / 2)
    assert torch.allclose(out[-1], pe[76] + 3 * (pe[76] - pe[75]) / 4)


def test_cpu_is_chosen_without_a_gpu_and_a_missing_gpu_is_explained():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    model = wrap_model(make_clip(), TINY, device="auto")
    assert model.device.type == "cpu" and model.dtype == torch.float32
    with pytest.raises(ModelError, match="no CUDA GPU"):
        wrap_model(make_clip(), TINY, device="cuda")
