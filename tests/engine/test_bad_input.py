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
    ("; ".join(f"class {i}" for i in range(300)), "300 classes given; at most 254"),
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
