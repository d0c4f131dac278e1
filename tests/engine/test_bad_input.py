"""Bad input to the dense engine gives a clear one-line error naming the problem."""

from __future__ import annotations

import numpy as np
import pytest

from engine.dense import InferenceOptions, PromptSet, segment_image
from engine.errors import InputError

GOOD = np.zeros((64, 64, 3), dtype=np.uint8)


@pytest.mark.parametrize("classes, message", [
    ("", "no classes given"),
    ([], "no classes given"),
    (" ; \n ;", "no classes given"),
    ("building; , ,; road", r"class 2 \(', ,'\) holds no name"),
    ("road; tree; Road", "name 'Road' appears in class 1 and class 3"),
    ("caf\u00e9; water; cafe\u0301", "name 'caf\u00e9' appears in class 1 and class 3"),  # an accent typed apart
    ("Straße; STRASSE", "name 'STRASSE' appears in class 1 and class 2"),
    ("water\u200b; water", "name 'water' appears in class 1 and class 2"),  # a zero-width space
    ("; ".join(f"class {i}" for i in range(300)), "300 classes given; at most 254"),
    # 10,000 synonyms of one class: 800,000 prompts to encode (the API ran out of memory past 3.8 GB)
    (",".join(f"a{i}" for i in range(10_000)) + "; road", r"10001 names given \(classes and their synonyms\); "
                                                          r"at most 512 in all"),
    (42, "classes must be text"),
])
def test_bad_class_lists(classes, message):
    with pytest.raises(InputError, match=message):
        PromptSet.parse(classes)


@pytest.mark.parametrize("image, message", [
    (np.zeros((64, 64), dtype=np.uint8), r"RGB with shape H×W×3, got shape \(64, 64\)"),
    (np.zeros((64, 64, 4), dtype=np.uint8), r"RGB with shape H×W×3, got shape \(64, 64, 4\)"),
    (np.zeros((0, 64, 3), dtype=np.uint8), "image is empty"),
    (np.full((64, 64, 3), np.nan, dtype=np.float32), "NaN or infinite"),
    (np.full((64, 64, 3), 7.0, dtype=np.float32), r"values in \[0, 1\]"),
    (np.zeros((64, 64, 3), dtype=np.uint16), "dtype uint16 not supported"),
    ([[1, 2, 3]], "numpy array"),
])
def test_bad_images(tiny_model, image, message):
    with pytest.raises(InputError, match=message) as err:
        segment_image(image, "building; road", tiny_model)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("options, message", [
    (InferenceOptions(prob_threshold=1.5), "threshold"),
    (InferenceOptions(global_bias=-1), "global bias"),
    (InferenceOptions(batch_size=0), "batch size"),
    (InferenceOptions(crop=224, stride=300), "stride"),
    (InferenceOptions(template_set="poems"), "template set"),
])
def test_bad_options(tiny_model, options, message):
    with pytest.raises(InputError, match=message):
        segment_image(GOOD, "building; road", tiny_model, options)


@pytest.mark.parametrize("background, message", [
    (" ", "the background class has no name"),
    (" , ", "the background class has no name"),
    ("shadow; cloud", "the background is one class: 'shadow; cloud' holds ';'"),
])
def test_a_background_that_is_not_one_named_class_is_refused(tiny_model, background, message):
    """A blank background with a threshold wrote class values no class had (or crashed tracing polygons);
    'shadow; cloud' made 'cloud' a class of its own."""
    with pytest.raises(InputError, match=message):
        segment_image(GOOD, "water; roof", tiny_model, InferenceOptions(background=background, prob_threshold=0.6))


def test_names_are_kept_as_one_spelling_and_labels_find_them_however_typed():
    prompts = PromptSet.parse("cafe\u0301 terrace; solar  panel, \ufeffPV")
    assert prompts.names == ["caf\u00e9 terrace", "solar panel", "PV"]
    for typed, index in [("CAF\u00c9 TERRACE", 0), ("solar\tpanel", 1), ("solar\u00a0panel", 1), (" pv ", 1)]:
        assert prompts.index_of(typed) == index, typed


def test_a_name_the_text_encoder_would_cut_short_is_refused(tiny_model):
    """200 characters of CJK are ~600 tokens: the encoder reads 77, so two such names differing past the cut
    were one embedding — a class that could never win, said nowhere."""
    for long_name in ("森林" * 40 + "甲", "森林" * 12):  # (24 characters, 72 bytes of UTF-8: 83 tokens)
        with pytest.raises(InputError, match=r"is too long for the model's text encoder: with its prompt template "
                                             r"it makes \d+ tokens, and the model reads 77; shorten it"):
            segment_image(GOOD, f"water; {long_name}", tiny_model)
    segment_image(GOOD, "water; a red brick building with a flat roof next to a road", tiny_model)  # fits


@pytest.mark.parametrize("query", ["\u200b" * 300, " \u200b\u2060 ", ""])
def test_a_search_query_of_invisible_marks_is_empty(query):
    from engine.dense.prompts import query_prompts

    with pytest.raises(InputError, match="the search query is empty"):
        query_prompts(query)
