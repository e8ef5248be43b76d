"""Pascal VOC mAP@0.5 through the OD API's own evaluator (``PascalDetectionEvaluator``).

Boxes are scaled to pixels first: IoU on normalised coordinates differs from IoU on pixels
for non-square images.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from pipeline.core import compat
from pipeline.evaluation.coco import GroundTruthImage, ImageDetections

_MAP_KEY = "PascalBoxes_Precision/mAP@0.5IOU"
_CLASS_KEY = "PascalBoxes_PerformanceByCategory/AP@0.5IOU/"


def pascal_voc_metrics(truths: Sequence[GroundTruthImage], detections: Sequence[ImageDetections],
                       categories: Mapping[int, str]) -> dict:
    """``{"map_50": mAP@0.5, "per_class": {name: AP@0.5 or None}}`` (None: no ground truth)."""
    compat.apply()
    compat.numpy_aliases_for_od_metrics()
    from object_detection.core.standard_fields import DetectionResultFields as D
    from object_detection.core.standard_fields import InputDataFields as I
    from object_detection.utils.object_detection_evaluation import PascalDetectionEvaluator

    evaluator = PascalDetectionEvaluator(
        [{"id": int(i), "name": n} for i, n in sorted(categories.items())])
    for truth, det in zip(truths, detections):
        scale = np.array([truth.height, truth.width, truth.height, truth.width], np.float64)
        evaluator.add_single_ground_truth_image_info(truth.image_id, {
            I.groundtruth_boxes: np.asarray(truth.boxes, np.float64).reshape(-1, 4) * scale,
            I.groundtruth_classes: np.asarray(truth.classes, np.int64)})
        evaluator.add_single_detected_image_info(det.image_id, {
            D.detection_boxes: np.asarray(det.boxes, np.float64).reshape(-1, 4) * scale,
            D.detection_scores: np.asarray(det.scores, np.float64),
            D.detection_classes: np.asarray(det.classes, np.int64)})
    results = evaluator.evaluate()
    return {"map_50": _number(results[_MAP_KEY]),
            "per_class": {n: _number(results.get(_CLASS_KEY + n, np.nan))
                          for _, n in sorted(categories.items())}}


def _number(value: float) -> float | None:
    # The evaluator reports NaN for classes without ground truth.
    value = float(value)
    return None if np.isnan(value) else value
