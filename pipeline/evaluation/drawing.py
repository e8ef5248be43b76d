"""Boxes drawn on images with OpenCV (per-class colour, class name and score), for the report's
ground truth vs predictions pictures and for ``predict``."""
from __future__ import annotations

from typing import Mapping

import numpy as np

#: Distinct colours (RGB) cycled by class id.
PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128)]


def class_colour(class_id: int) -> tuple[int, int, int]:
    """The palette colour of a class id."""
    return PALETTE[int(class_id) % len(PALETTE)]


def draw_boxes(image: np.ndarray, boxes: np.ndarray, classes: np.ndarray,
               names: Mapping[int, str], scores: np.ndarray | None = None,
               colour: tuple[int, int, int] | None = None) -> np.ndarray:
    """A copy of the RGB ``image`` with normalised ``[ymin, xmin, ymax, xmax]`` boxes drawn.

    Each box is labelled with its class name, and its score when ``scores`` are given;
    ``colour`` overrides the class colour.
    """
    import cv2

    out = np.ascontiguousarray(image, dtype=np.uint8).copy()
    height, width = out.shape[:2]
    thickness = max(1, round(min(height, width) / 200))
    for k, box in enumerate(np.asarray(boxes).reshape(-1, 4)):
        y0, x0, y1, x1 = (np.clip(box, 0, 1) * [height, width, height, width]).astype(int)
        rgb = colour or class_colour(classes[k])
        cv2.rectangle(out, (x0, y0), (x1, y1), rgb, thickness)
        label = names.get(int(classes[k]), str(int(classes[k])))
        _label(out, label if scores is None else f"{label} {scores[k]:.2f}", (x0, y0), rgb)
    return out


def _label(image: np.ndarray, text: str, corner: tuple[int, int], rgb) -> None:
    import cv2

    scale = max(0.35, image.shape[0] / 800)
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x, y = corner[0], max(corner[1], h + base)
    cv2.rectangle(image, (x, y - h - base), (x + w, y), rgb, -1)
    cv2.putText(image, text, (x, y - base), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1,
                cv2.LINE_AA)


def ground_truth_vs_predictions(image: np.ndarray, truth_boxes: np.ndarray,
                                truth_classes: np.ndarray, boxes: np.ndarray,
                                classes: np.ndarray, scores: np.ndarray,
                                names: Mapping[int, str]) -> np.ndarray:
    """Side by side: ground truth (left, class colours) and predictions (right, with scores)."""
    left = draw_boxes(image, truth_boxes, truth_classes, names)
    right = draw_boxes(image, boxes, classes, names, scores=scores)
    gap = np.full((image.shape[0], 4, 3), 255, np.uint8)
    return np.concatenate([left, gap, right], axis=1)
