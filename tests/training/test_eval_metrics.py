"""Metric code against hand-computed confusion matrices."""

from __future__ import annotations

import numpy as np
import pytest

from training.evaluate.metrics import ConfusionMatrix, retrieval_metrics, topk_accuracy


def test_iou_summed_over_the_split_with_ignore_and_absent_classes():
    cm = ConfusionMatrix(4)
    # image 1: truth/prediction; 255 is ignored whatever is predicted there
    cm.update(np.array([[0, 0, 1], [1, 255, 2]]), np.array([[0, 1, 1], [1, 3, 2]]))
    # image 2: class 2 predicted where truth is 0; class 3 never appears in the truth
    cm.update(np.array([[0, 2]]), np.array([[2, 2]]))
    # by hand: class 0: I=1, U = truth(3) + pred(1) - 1 = 3 → 1/3
    #          class 1: I=2, U = truth(2) + pred(3) - 2 = 3 → 2/3
    #          class 2: I=2, U = truth(2) + pred(3) - 2 = 3 → 2/3
    #          class 3: truth 0, pred 0 (the 3 was on an ignored pixel) → NaN, left out
    iou = cm.iou()
    assert iou[:3] == pytest.approx([1 / 3, 2 / 3, 2 / 3])
    assert np.isnan(iou[3])
    assert cm.miou() == pytest.approx((1 / 3 + 2 / 3 + 2 / 3) / 3)
    assert cm.pixel_accuracy() == pytest.approx(5 / 7)


def test_a_predicted_class_absent_from_the_truth_counts_in_the_mean():
    cm = ConfusionMatrix(3)
    cm.update(np.array([0, 0, 1, 1]), np.array([0, 2, 1, 1]))
    # class 2: I=0, U=1 → IoU 0 (counted); class 0: 1/2; class 1: 1
    assert cm.iou() == pytest.approx([0.5, 1.0, 0.0])
    assert cm.miou() == pytest.approx(0.5)


def test_no_class_predictions_are_wrong_not_ignored():
    cm = ConfusionMatrix(2)
    cm.update(np.array([0, 0, 1]), np.array([0, 255, 1]))
    assert cm.iou() == pytest.approx([0.5, 1.0])
    assert cm.pixel_accuracy() == pytest.approx(2 / 3)


def test_label_values_outside_the_classes_are_an_error():
    with pytest.raises(ValueError, match="label value 5"):
        ConfusionMatrix(3).update(np.array([5]), np.array([0]))


def test_topk_accuracy():
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
    truth = np.array([2, 0, 0])
    assert topk_accuracy(scores, truth, 1) == pytest.approx(1 / 3)
    assert topk_accuracy(scores, truth, 2) == pytest.approx(2 / 3)
    assert topk_accuracy(scores, truth, 5) == pytest.approx(1.0)


def test_retrieval_recall_with_several_positives():
    # 3 images, 4 captions; image 0 has captions 0 and 1
    sim = np.array([[0.9, 0.1, 0.3, 0.2],
                    [0.8, 0.2, 0.7, 0.1],
                    [0.1, 0.3, 0.2, 0.05]])
    result = retrieval_metrics(sim, [{0, 1}, {2}, {3}])
    # i2t R@1: img0 → 0 (hit), img1 → 0 (miss), img2 → 1 (miss) = 1/3
    assert result["i2t"]["R@1"] == pytest.approx(100 / 3)
    # t2i R@1: cap0 → img0 (hit), cap1 → img2 (miss), cap2 → img1 (hit), cap3 → img0 (miss) = 2/4
    assert result["t2i"]["R@1"] == pytest.approx(50.0)
    assert result["t2i"]["R@10"] == pytest.approx(100.0)
    assert result["i2t"]["mean_recall"] == pytest.approx(np.mean([100 / 3, 100, 100]))
