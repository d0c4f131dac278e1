"""Synonyms, templates, threshold and global bias behave as specified."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.dense.forward import dense_features
from engine.dense import InferenceOptions, PromptSet, Segmenter, prepare_image
from engine.dense.prompts import NO_CLASS, templates
from engine.dense.scoring import class_probabilities, classes_from_logits
from engine.dense.sliding import crop_maps
from engine.dense.text import embed_names


def test_class_lines_parse_with_synonyms():
    prompts = PromptSet.parse("building, roof ;road\n tree,forest ; water")
    assert prompts.labels == ["building", "road", "tree", "water"]
    assert prompts.names == ["building", "roof", "road", "tree", "forest", "water"]
    assert prompts.name_to_class == [0, 0, 1, 2, 2, 3]
    assert PromptSet.parse(["low  vegetation", "car"]).labels == ["low vegetation", "car"]


def test_name_embedding_is_the_normalised_mean_over_templates(tiny_model):
    names = ["harbor", "tennis court"]
    got = embed_names(tiny_model, names, "imagenet80")
    tmpl = templates("imagenet80")
    assert len(tmpl) == 80
    for row, name in zip(got, names):
        per_template = tiny_model.encode_text([t.format(name) for t in tmpl])
        want = F.normalize(per_template.mean(0), dim=0)
        torch.testing.assert_close(row, want)
    assert embed_names(tiny_model, names, "imagenet80") is got  # cached


def test_a_model_loaded_after_one_was_freed_gets_its_own_text_embeddings():
    """A server that unloads a model and loads other weights from the same file (retrained, replaced):
    the new network may land at the freed one's address, and must not take its cached embeddings."""
    import gc

    from engine.models.loader import wrap_model
    from tests.engine.conftest import TINY, make_clip

    names = ["harbor", "tennis court"]
    first = wrap_model(make_clip(seed=0), TINY, name="tiny", device="cpu")
    freed_address = id(first.clip)
    embed_names(first, names, "imagenet80")
    del first
    gc.collect()
    for seed in range(1, 4):  # CPython usually hands the freed address to the next network of that size
        other = wrap_model(make_clip(seed=seed), TINY, name="tiny", device="cpu")
        own = F.normalize(other.encode_text([t.format(n) for n in names for t in templates("imagenet80")])
                          .reshape(len(names), 80, -1).mean(1), dim=-1)
        torch.testing.assert_close(embed_names(other, names, "imagenet80"), own,
                                   msg=f"same address as the freed model: {id(other.clip) == freed_address}")
        del other
        gc.collect()


def test_class_score_is_the_max_over_synonyms_of_a_softmax_over_all_names():
    logits = torch.tensor([[0.30, 0.10], [0.25, 0.32], [0.20, 0.31]])  # names × pixels
    probs = class_probabilities(logits, [0, 1, 1], logit_scale=50.0)
    softmax = torch.softmax(logits * 50, dim=0)
    torch.testing.assert_close(probs[0], softmax[0])
    torch.testing.assert_close(probs[1], torch.maximum(softmax[1], softmax[2]))
    assert classes_from_logits(logits, [0, 1, 1], logit_scale=50.0)[0].tolist() == [0, 1]


@pytest.mark.parametrize("threshold", [0.0, 0.3])
def test_the_class_map_is_the_first_best_class_as_torch_max_gives_it(threshold):
    rng = np.random.default_rng(5)
    logits = torch.from_numpy(rng.random((7, 40, 50), dtype=np.float32)) * 0.2
    logits[:, :10] = torch.from_numpy(rng.integers(0, 3, (7, 10, 50)).astype(np.float32)) * 0.01  # many ties
    name_to_class = [0, 0, 1, 2, 2, 2, 3]
    labels, best = classes_from_logits(logits, name_to_class, 50.0, threshold, with_best=True)
    want_best, want_index = class_probabilities(logits, name_to_class, 50.0).max(dim=0)
    want_index = torch.where(want_best < threshold, NO_CLASS, want_index)
    assert labels.dtype == torch.uint8 and torch.equal(labels, want_index.to(torch.uint8))
    assert torch.equal(best, want_best)  # bit for bit the score rasters' best class probability
    assert classes_from_logits(logits, name_to_class, 50.0, threshold)[1] is None
    # the same from the probabilities a caller made for its score raster (no second softmax)
    given = classes_from_logits(logits, name_to_class, 50.0, threshold, with_best=True,
                                probabilities=class_probabilities(logits, name_to_class, 50.0))
    assert torch.equal(given[0], labels) and torch.equal(given[1], best)


def test_threshold_sends_uncertain_pixels_to_background_or_no_class():
    probs = torch.tensor([[0.9, 0.40, 0.2], [0.1, 0.35, 0.1], [1e-9, 0.25, 0.7]])  # one name per class
    logits = probs.log() / 50  # whose softmax at logit scale 50 is `probs`
    assert classes_from_logits(logits, [0, 1, 2], 50.0, 0.5, background_index=2)[0].tolist() == [0, 2, 2]
    assert classes_from_logits(logits, [0, 1, 2], 50.0, 0.5)[0].tolist() == [0, NO_CLASS, 2]
    assert classes_from_logits(logits, [0, 1, 2], 50.0, 0.0)[0].tolist() == [0, 0, 2]


def test_background_class_is_added_when_missing_and_reused_when_present(tiny_model):
    added = Segmenter(tiny_model, "building; road", InferenceOptions(background="background"))
    assert added.classes == ["building", "road", "background"] and added.background_index == 2
    reused = Segmenter(tiny_model, "clutter,background; road", InferenceOptions(background="background"))
    assert reused.classes == ["clutter", "road"] and reused.background_index == 0


def test_global_bias_subtracts_lambda_times_the_image_level_score(tiny_model):
    torch.manual_seed(4)
    text = F.normalize(torch.randn(5, 32), dim=-1)  # constructed name embeddings
    crops = prepare_image(np.random.default_rng(4).integers(0, 256, (224, 224, 3), dtype=np.uint8))[None]
    plain, _ = crop_maps(tiny_model, crops, text, 224, global_bias=0.0)  # patch-level logit maps
    biased, _ = crop_maps(tiny_model, crops, text, 224, global_bias=0.3)
    # the image-level embedding as SegEarth-OV / RS-OVSS take it: the CLS row of the same dense pass
    # (custom last-block attention, ln_post, proj), normalised — not the standard CLS of `encode_image`
    _, cls = dense_features(tiny_model.clip.visual, crops.to(tiny_model.device, tiny_model.dtype), dense_cls=True)
    image_level = F.normalize(cls.float(), dim=-1) @ text.T
    assert not torch.allclose(image_level, tiny_model.encode_image(crops) @ text.T, atol=1e-3)
    torch.testing.assert_close(plain - biased, (0.3 * image_level)[:, :, None, None].expand_as(plain),
                               rtol=1e-4, atol=1e-5)


def test_segment_image_returns_map_and_scores(tiny_model):
    image = np.random.default_rng(5).integers(0, 256, (130, 250, 3), dtype=np.uint8)
    result = Segmenter(tiny_model, "building,roof; road; tree").segment(image)
    assert result.class_map.shape == (130, 250) and result.class_map.dtype == np.uint8
    assert result.scores.shape == (3, 130, 250) and result.scores.dtype == np.float32
    assert set(np.unique(result.class_map)) <= {0, 1, 2}
    np.testing.assert_array_equal(result.class_map, result.scores.argmax(0))
    as_float = Segmenter(tiny_model, "building,roof; road; tree").segment(image.astype(np.float32) / 255)
    np.testing.assert_allclose(as_float.scores, result.scores, atol=1e-5)
