"""The registered model's pyfunc: the one runner's Detections as the exporter's four arrays."""
from __future__ import annotations

import numpy as np

from pipeline.odapi.detector import Detections
from pipeline.odapi.serving import as_arrays


def _detections(scores: list[float], classes: list[int]) -> Detections:
    boxes = np.array([[0.1 * k, 0.1, 0.2 + 0.1 * k, 0.3] for k in range(len(scores))],
                     np.float32).reshape(-1, 4)
    return Detections(boxes, np.array(scores, np.float32), np.array(classes, np.int64))


def test_images_are_padded_to_the_longest_list_and_keep_their_counts():
    first, second = _detections([0.9, 0.5], [2, 1]), _detections([], [])
    arrays = as_arrays([first, second])
    assert arrays["detection_boxes"].shape == (2, 2, 4)
    assert arrays["detection_scores"].tolist() == [[np.float32(0.9), 0.5], [0.0, 0.0]]
    assert arrays["detection_classes"].tolist() == [[2.0, 1.0], [0.0, 0.0]]
    assert arrays["num_detections"].tolist() == [2.0, 0.0]
    np.testing.assert_array_equal(arrays["detection_boxes"][0], first.boxes)
    assert not arrays["detection_boxes"][1].any()


def test_no_images_give_empty_arrays():
    arrays = as_arrays([])
    assert arrays["detection_boxes"].shape == (0, 0, 4) and arrays["num_detections"].size == 0


def test_class_names_come_from_the_label_map_and_unnamed_ids_stay_ids():
    arrays = as_arrays([_detections([0.9, 0.5], [2, 7]), _detections([0.8], [1])],
                       {1: "raccoon", 2: "kangaroo"})
    assert arrays["detection_class_names"].tolist() == [["kangaroo", "7"], ["raccoon", ""]]
