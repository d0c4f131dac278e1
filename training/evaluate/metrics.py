"""Metrics as the published evaluation computes them.

- Segmentation (mmsegmentation's IoUMetric): intersection and union summed over the whole split per
  class; IoU = I / U; classes with U = 0 are NaN and left out of the mean; label 255 is ignored.
- Classification: top-k accuracy.
- Retrieval: Recall@K in both directions with several positives per query (a caption's positives are
  all images it describes, an image's positives all its captions); mean recall = mean of R@1, R@5, R@10.
"""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255


class ConfusionMatrix:
    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)  # rows: truth, cols: prediction
        self.missed = np.zeros(num_classes, dtype=np.int64)  # truth pixels predicted as "no class" (255)

    def update(self, truth: np.ndarray, prediction: np.ndarray) -> None:
        if truth.shape != prediction.shape:
            raise ValueError(f"label {truth.shape} and prediction {prediction.shape} differ in shape")
        keep = truth != self.ignore_index
        t = truth[keep].astype(np.int64)
        p = prediction[keep].astype(np.int64)
        if t.size and (t.max() >= self.num_classes or t.min() < 0):
            raise ValueError(f"label value {int(t.max())} outside 0..{self.num_classes - 1}")
        valid = (p >= 0) & (p < self.num_classes)  # a prediction of "no class" counts as wrong
        self.matrix += np.bincount(t[valid] * self.num_classes + p[valid],
                                   minlength=self.num_classes ** 2).reshape(self.num_classes, self.num_classes)
        self.missed += np.bincount(t[~valid], minlength=self.num_classes)

    def iou(self) -> np.ndarray:
        intersection = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(0) + self.matrix.sum(1) + self.missed - np.diag(self.matrix)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(union > 0, intersection / np.maximum(union, 1), np.nan)

    def miou(self) -> float:
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    def pixel_accuracy(self) -> float:
        total = self.matrix.sum() + self.missed.sum()
        return float(np.diag(self.matrix).sum() / total) if total else float("nan")


def topk_accuracy(scores: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Share of rows whose true class is among the k highest scores."""
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1)[:, :k]
    return float((top == truth[:, None]).any(axis=1).mean())


def recall_at_k(similarity: np.ndarray, positives: list[set[int]], k: int) -> float:
    """Share of queries (rows) with at least one positive among their k most similar items."""
    top = np.argsort(-similarity, axis=1)[:, :k]
    return float(np.mean([bool(positives[i] & set(top[i].tolist())) for i in range(similarity.shape[0])]))


def retrieval_metrics(similarity: np.ndarray, image_to_texts: list[set[int]]) -> dict:
    """similarity [images, texts]; image_to_texts[i] = the texts describing image i."""
    text_to_images: list[set[int]] = [set() for _ in range(similarity.shape[1])]
    for i, texts in enumerate(image_to_texts):
        for t in texts:
            text_to_images[t].add(i)
    out = {}
    for direction, sim, pos in (("i2t", similarity, image_to_texts), ("t2i", similarity.T, text_to_images)):
        recalls = {f"R@{k}": 100 * recall_at_k(sim, pos, k) for k in (1, 5, 10)}
        out[direction] = {**recalls, "mean_recall": float(np.mean(list(recalls.values())))}
    return out
