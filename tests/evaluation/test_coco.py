"""COCO metrics from per-image arrays (pipeline.evaluation.coco): known cases with exact answers."""
from __future__ import annotations


import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from pipeline.evaluation import coco as coco_eval
from pipeline.evaluation.coco import GroundTruthImage, ImageDetections

CATEGORIES = {1: "circle", 2: "square"}
SIZE = 200  # square test images, pixels


def _norm(x: float, y: float, w: float, h: float) -> list[float]:
    """Absolute [x, y, w, h] -> normalised [ymin, xmin, ymax, xmax] on a SIZE x SIZE image."""
    return [y / SIZE, x / SIZE, (y + h) / SIZE, (x + w) / SIZE]


def _gt(image_id: int, boxes: list, classes: list, **extra) -> GroundTruthImage:
    return GroundTruthImage(image_id, f"{image_id}.jpg", SIZE, SIZE,
                            np.array(boxes, float).reshape(-1, 4), np.array(classes), **extra)


def _det(image_id: int, boxes: list, classes: list, scores: list | None = None) -> ImageDetections:
    scores = [0.9] * len(classes) if scores is None else scores
    return ImageDetections(image_id, SIZE, SIZE, np.array(boxes, float).reshape(-1, 4),
                           np.array(scores, float), np.array(classes))


def _two_images() -> list[GroundTruthImage]:
    # 40x40 boxes: area 1600 px^2 is COCO's "medium" bucket (32^2 <= area < 96^2).
    return [
        _gt(1, [_norm(10, 10, 40, 40), _norm(100, 100, 40, 40)], [1, 2]),
        _gt(2, [_norm(50, 20, 40, 40), _norm(120, 30, 40, 40)], [1, 2]),
    ]


def _metrics(images, detections) -> dict:
    gt = coco_eval.groundtruth_dict(images, CATEGORIES)
    return coco_eval.compute_metrics(gt, coco_eval.detections_list(detections))


def test_to_coco_boxes_converts_normalised_yx_to_absolute_xywh():
    boxes = coco_eval.to_coco_boxes(np.array([[0.1, 0.2, 0.5, 0.6]]), width=100, height=50)
    np.testing.assert_allclose(boxes, [[20.0, 5.0, 40.0, 20.0]])


def test_perfect_detections_score_one():
    images = _two_images()
    detections = [_det(im.image_id, im.boxes, im.classes) for im in images]
    metrics = _metrics(images, detections)
    assert set(metrics) == set(coco_eval.SUMMARY_KEYS) | {"per_class"}
    for key in ("map", "map_50", "map_75", "map_medium", "mar_1", "mar_10", "mar_100"):
        assert metrics[key] == pytest.approx(1.0), key
    assert list(metrics["per_class"]) == ["circle", "square"]
    for scores in metrics["per_class"].values():
        assert scores == pytest.approx({"ap": 1.0, "ap50": 1.0})


def test_empty_size_buckets_are_none():
    images = _two_images()
    metrics = _metrics(images, [_det(im.image_id, im.boxes, im.classes) for im in images])
    for key in ("map_small", "map_large", "mar_small", "mar_large"):
        assert metrics[key] is None, key


def test_shifted_class_matches_only_at_low_iou_thresholds():
    # "square" boxes are shifted right by 9 px: IoU = 31*40 / (49*40) = 0.633, so they match at
    # IoU 0.50, 0.55 and 0.60 (3 of the 10 thresholds) and are false positives from 0.65 on.
    images = _two_images()
    detections = []
    for im in images:
        boxes = im.boxes.copy()
        boxes[im.classes == 2, 1::2] += 9 / SIZE  # xmin and xmax
        detections.append(_det(im.image_id, boxes, im.classes))
    metrics = _metrics(images, detections)
    assert metrics["per_class"]["circle"] == pytest.approx({"ap": 1.0, "ap50": 1.0})
    assert metrics["per_class"]["square"]["ap50"] == pytest.approx(1.0)
    assert metrics["per_class"]["square"]["ap"] == pytest.approx(0.3)
    assert metrics["map"] == pytest.approx(0.65)
    assert metrics["map_50"] == pytest.approx(1.0)
    assert metrics["map_75"] == pytest.approx(0.5)
    assert metrics["mar_100"] == pytest.approx(0.65)


def test_missing_and_wrong_class_detections():
    images = _two_images()
    # Image 1: only the circle is found. Image 2: the circle is labelled as a square.
    detections = [_det(1, images[0].boxes[:1], [1]), _det(2, images[1].boxes[:1], [2])]
    metrics = _metrics(images, detections)
    # Recall 1/2 at precision 1: 51 of COCO's 101 recall points (0, 0.01, ..., 0.5) score 1.
    assert metrics["per_class"]["circle"]["ap"] == pytest.approx(51 / 101)
    assert metrics["per_class"]["square"]["ap"] == pytest.approx(0.0)
    assert metrics["mar_100"] == pytest.approx(0.25)


def test_no_detections_scores_zero():
    metrics = _metrics(_two_images(), [])
    assert metrics["map"] == 0.0
    assert metrics["per_class"]["circle"] == {"ap": 0.0, "ap50": 0.0}


def test_class_without_ground_truth_has_null_ap():
    images = [_gt(1, [_norm(10, 10, 40, 40)], [1])]
    metrics = _metrics(images, [_det(1, images[0].boxes, [1])])
    assert metrics["per_class"]["circle"] == pytest.approx({"ap": 1.0, "ap50": 1.0})
    assert metrics["per_class"]["square"] == {"ap": None, "ap50": None}
    assert metrics["map"] == pytest.approx(1.0)  # COCO averages only classes with ground truth


def test_crowd_and_area_are_kept():
    image = _gt(1, [_norm(10, 10, 40, 40), _norm(60, 60, 80, 80)], [1, 1],
                is_crowd=np.array([0, 1]), area=np.array([500.0, 6400.0]))
    anns = coco_eval.groundtruth_dict([image], CATEGORIES)["annotations"]
    assert [a["iscrowd"] for a in anns] == [0, 1]
    assert [a["area"] for a in anns] == [500.0, 6400.0]
    # A crowd region neither needs a detection nor makes one inside it a false positive.
    detections = [_det(1, [image.boxes[0], _norm(70, 70, 30, 30)], [1, 1], [0.9, 0.95])]
    metrics = _metrics([image], detections)
    assert metrics["map"] == pytest.approx(1.0)
    assert metrics["map_small"] == pytest.approx(1.0)  # the record's area (500) decides the bucket


def test_saved_json_rescored_with_plain_pycocotools_gives_the_same_numbers(tmp_path):
    rng = np.random.default_rng(0)
    images, detections = [], []
    for image_id in range(1, 9):
        xy = rng.uniform(0, 120, size=(3, 2))
        wh = rng.uniform(10, 80, size=(3, 2))
        boxes = [_norm(x, y, w, h) for (x, y), (w, h) in zip(xy, wh)]
        classes = rng.integers(1, 3, size=3)
        images.append(_gt(image_id, boxes, classes))
        noisy = np.clip(np.array(boxes) + rng.normal(0, 0.03, size=(3, 4)), 0, 1)
        detections.append(_det(image_id, noisy, classes, rng.uniform(0.1, 1, 3).tolist()))
    gt = coco_eval.groundtruth_dict(images, CATEGORIES)
    dets = coco_eval.detections_list(detections)
    metrics = coco_eval.compute_metrics(gt, dets)
    coco_eval.save_coco(gt, dets, tmp_path)

    coco_gt = COCO(str(tmp_path / "groundtruth.json"))
    evaluator = COCOeval(coco_gt, coco_gt.loadRes(str(tmp_path / "detections.json")), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    expected = [None if s < 0 else s for s in evaluator.stats]
    assert [metrics[k] for k in coco_eval.SUMMARY_KEYS] == pytest.approx(expected)
    assert 0 < metrics["map"] < 1  # a real, imperfect case


