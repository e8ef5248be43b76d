"""Confusion matrix of a detector at one IoU and score threshold, with a background class.

Per image, detections at or above the score threshold are taken in descending score order;
each is matched to the unmatched ground-truth box of highest IoU (any class) if that IoU is at
least the IoU threshold. A match counts at (true class, predicted class); an unmatched ground
truth at (true class, background) -- missed; an unmatched detection at (background,
predicted class) -- a false alarm. The same matching gives each image's error count, used to
pick the worst images of the report.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from pipeline.evaluation.coco import GroundTruthImage, ImageDetections

BACKGROUND = "background"


@dataclass(frozen=True)
class ConfusionResult:
    """``matrix[actual, predicted]`` over ``labels`` (classes then background) and errors."""

    labels: list[str]
    matrix: np.ndarray  # [C+1, C+1] int
    errors_per_image: dict[int, int]  # image_id -> missed + false alarms + wrong class


def confusion_matrix(truths: Sequence[GroundTruthImage], detections: Sequence[ImageDetections],
                     categories: Mapping[int, str], iou_threshold: float = 0.5,
                     score_threshold: float = 0.5) -> ConfusionResult:
    """Count matches per (actual, predicted) class; see the module docstring for the rules."""
    ids = sorted(categories)
    index = {cid: k for k, cid in enumerate(ids)}
    background = len(ids)
    matrix = np.zeros((len(ids) + 1, len(ids) + 1), np.int64)
    errors = {}
    for truth, det in zip(truths, detections):
        keep = np.asarray(det.scores) >= score_threshold
        pairs = match(truth, det.boxes[keep], det.scores[keep], iou_threshold)
        before = matrix.trace() - matrix[background, background]
        _count(matrix, pairs, truth.classes, det.classes[keep], index, background)
        correct = matrix.trace() - matrix[background, background] - before
        errors[truth.image_id] = len(truth.classes) + int(keep.sum()) - 2 * int(correct)
    return ConfusionResult([categories[i] for i in ids] + [BACKGROUND], matrix, errors)


def top_confusions(result: ConfusionResult, count: int) -> list[tuple[int, int]]:
    """``(actual, predicted)`` indices of the ``count`` largest non-zero off-diagonal cells
    (wrong class, missed or false alarm), largest first; ties in row-major order."""
    off = result.matrix.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:count]
    cells = zip(*np.unravel_index(order, off.shape))
    return [(int(i), int(j)) for i, j in cells if off[i, j] > 0]


def _count(matrix, pairs, true_classes, pred_classes, index, background) -> None:
    matched_gt = {g for g, _ in pairs}
    matched_pred = {p for _, p in pairs}
    for g, p in pairs:
        matrix[index[int(true_classes[g])], index.get(int(pred_classes[p]), background)] += 1
    for g in set(range(len(true_classes))) - matched_gt:
        matrix[index[int(true_classes[g])], background] += 1
    for p in set(range(len(pred_classes))) - matched_pred:
        matrix[background, index.get(int(pred_classes[p]), background)] += 1


def match(truth: GroundTruthImage, boxes: np.ndarray, scores: np.ndarray,
          iou_threshold: float) -> list[tuple[int, int]]:
    """Greedy ``(gt index, detection index)`` pairs, detections by descending score."""
    from object_detection.utils import np_box_ops

    if len(boxes) == 0 or len(truth.boxes) == 0:
        return []
    scale = np.array([truth.height, truth.width, truth.height, truth.width], np.float64)
    iou = np_box_ops.iou(np.asarray(boxes, np.float64) * scale,
                         np.asarray(truth.boxes, np.float64) * scale)  # [det, gt]
    pairs, taken = [], set()
    for p in np.argsort(-np.asarray(scores), kind="stable"):
        candidates = [(iou[p, g], g) for g in range(len(truth.boxes)) if g not in taken]
        best_iou, best = max(candidates, default=(0.0, -1))
        if best >= 0 and best_iou >= iou_threshold:
            pairs.append((best, int(p)))
            taken.add(best)
    return pairs
