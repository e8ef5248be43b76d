"""COCO box metrics (pycocotools) from per-image ground truth and detections. No TensorFlow.

Inputs use the OD API's box convention: normalised ``[ymin, xmin, ymax, xmax]`` in [0, 1]
and class ids from the label map (from 1). They are converted to COCO's absolute-pixel
``[x, y, width, height]`` with the image's size, so the saved ``groundtruth.json`` and
``detections.json`` can be re-scored by anyone with plain pycocotools::

    gt = COCO("groundtruth.json"); dt = gt.loadRes("detections.json")
    e = COCOeval(gt, dt, "bbox"); e.evaluate(); e.accumulate(); e.summarize()

Metrics that pycocotools reports as -1 (no ground truth in that bucket, e.g. no small
objects) are returned as ``None`` (``null`` in JSON) so that they cannot be mistaken for,
or averaged with, real scores.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from pipeline.core import layout
from pipeline.core import files

log = logging.getLogger(__name__)

#: The 12 numbers of ``COCOeval.summarize()``, in the order of ``COCOeval.stats``.
SUMMARY_KEYS = (
    "map", "map_50", "map_75", "map_small", "map_medium", "map_large",
    "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large",
)


@dataclass(frozen=True)
class GroundTruthImage:
    """One test image's labelled boxes (normalised ``[ymin, xmin, ymax, xmax]``)."""

    image_id: int
    file_name: str
    width: int
    height: int
    boxes: np.ndarray  # [K, 4] float
    classes: np.ndarray  # [K] int, label-map ids
    is_crowd: np.ndarray | None = None  # [K] int; None = no crowd boxes
    area: np.ndarray | None = None  # [K] float, pixels^2; None = box width * height


@dataclass(frozen=True)
class ImageDetections:
    """A model's detections on one image (normalised ``[ymin, xmin, ymax, xmax]``)."""

    image_id: int
    width: int
    height: int
    boxes: np.ndarray  # [N, 4] float
    scores: np.ndarray  # [N] float
    classes: np.ndarray  # [N] int, label-map ids


def to_coco_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Normalised ``[ymin, xmin, ymax, xmax]`` -> absolute ``[x, y, w, h]`` (float64)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x, y = b[:, 1] * width, b[:, 0] * height
    return np.stack([x, y, b[:, 3] * width - x, b[:, 2] * height - y], axis=1)


def groundtruth_dict(images: Sequence[GroundTruthImage], categories: Mapping[int, str]) -> dict:
    """Build a COCO ground-truth dataset (``images``, ``annotations``, ``categories``)."""
    annotations: list[dict] = []
    for image in images:
        annotations.extend(_gt_annotations(image, first_id=len(annotations) + 1))
    return {
        "images": [
            {"id": im.image_id, "file_name": im.file_name, "width": im.width, "height": im.height}
            for im in images
        ],
        "annotations": annotations,
        "categories": [{"id": int(i), "name": n} for i, n in sorted(categories.items())],
    }


def _gt_annotations(image: GroundTruthImage, first_id: int) -> list[dict]:
    xywh = to_coco_boxes(image.boxes, image.width, image.height)
    count = len(xywh)
    crowd = np.zeros(count, int) if image.is_crowd is None else np.asarray(image.is_crowd)
    # COCO's area ranges (small/medium/large) use this field; a dataset's own area (e.g. a
    # segmentation's) is kept when the records carry one, as in the official COCO files.
    area = xywh[:, 2] * xywh[:, 3] if image.area is None else np.asarray(image.area, float)
    return [
        {
            "id": first_id + k, "image_id": image.image_id,
            "category_id": int(image.classes[k]), "bbox": [float(v) for v in xywh[k]],
            "area": float(area[k]), "iscrowd": int(crowd[k]),
        }
        for k in range(count)
    ]


def detections_list(detections: Sequence[ImageDetections]) -> list[dict]:
    """Build COCO results (``image_id``, ``category_id``, ``bbox``, ``score``), one per box."""
    results = []
    for det in detections:
        xywh = to_coco_boxes(det.boxes, det.width, det.height)
        results.extend(
            {
                "image_id": det.image_id, "category_id": int(det.classes[k]),
                "bbox": [float(v) for v in xywh[k]], "score": float(det.scores[k]),
            }
            for k in range(len(xywh))
        )
    return results


def run_cocoeval(groundtruth: dict, detections: list[dict]) -> Any:
    """Evaluate, accumulate and summarize (bbox); return the ``COCOeval`` object.

    pycocotools prints its progress and summary table: that text is captured and logged
    (summary at INFO) instead of going to stdout.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        coco_gt = COCO()
        coco_gt.dataset = json.loads(json.dumps(groundtruth))  # COCO mutates its dataset
        coco_gt.createIndex()
        coco_dt = _load_results(coco_gt, detections)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    log.info("COCO bbox evaluation:\n%s", _summary_table(printed.getvalue()))
    return evaluator


def _load_results(coco_gt: Any, detections: list[dict]) -> Any:
    # COCO.loadRes indexes anns[0], so it fails on an empty result list; build an empty one.
    if detections:
        return coco_gt.loadRes([dict(d) for d in detections])
    from pycocotools.coco import COCO

    empty = COCO()
    empty.dataset = {"images": list(coco_gt.dataset["images"]), "annotations": [],
                     "categories": list(coco_gt.dataset["categories"])}
    empty.createIndex()
    return empty


def _summary_table(printed: str) -> str:
    return "\n".join(line for line in printed.splitlines() if line.lstrip().startswith("Average"))


def summary_metrics(evaluator: Any) -> dict[str, float | None]:
    """The 12 summary numbers under :data:`SUMMARY_KEYS`; -1 (empty bucket) becomes None."""
    return {key: _score(value) for key, value in zip(SUMMARY_KEYS, evaluator.stats)}


def per_class_metrics(evaluator: Any) -> dict[str, dict]:
    """``{name: {"ap": AP@[.5:.95], "ap50": AP@.5}}`` per category (None: no ground truth).

    As in Detectron2 and the OD API, a class's AP is the mean of ``eval['precision']`` over
    IoU thresholds and recall points, for all areas and the largest maxDets, skipping -1.
    """
    precision = evaluator.eval["precision"]  # [IoU T, recall R, class K, area A, maxDets M]
    result = {}
    for k, cat_id in enumerate(evaluator.params.catIds):
        per_class = precision[:, :, k, 0, -1]
        result[_name(evaluator, cat_id)] = {"ap": _mean_valid(per_class),
                                      "ap50": _mean_valid(per_class[_iou_index(evaluator, 0.5)])}
    return result


def pr_curves(evaluator: Any, iou: float = 0.5) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{name: (recall, precision)}`` at one IoU threshold, all areas, largest maxDets.

    Classes without ground truth (precision all -1) are left out.
    """
    precision = evaluator.eval["precision"][_iou_index(evaluator, iou), :, :, 0, -1]
    recall = np.asarray(evaluator.params.recThrs)
    return {
        _name(evaluator, cat_id): (recall, precision[:, k])
        for k, cat_id in enumerate(evaluator.params.catIds)
        if np.any(precision[:, k] > -1)
    }


def _name(evaluator: Any, cat_id: int) -> str:
    return evaluator.cocoGt.cats[cat_id]["name"]


def _iou_index(evaluator: Any, iou: float) -> int:
    matches = np.flatnonzero(np.isclose(evaluator.params.iouThrs, iou))
    if len(matches) == 0:
        raise ValueError(f"IoU {iou} is not one of {list(evaluator.params.iouThrs)}")
    return int(matches[0])


def _mean_valid(values: np.ndarray) -> float | None:
    valid = values[values > -1]
    return float(np.mean(valid)) if valid.size else None


def _score(value: float) -> float | None:
    return None if value < 0 else float(value)


def compute_metrics(groundtruth: dict, detections: list[dict]) -> dict[str, Any]:
    """The flat metrics dict: the 12 :data:`SUMMARY_KEYS` plus ``per_class`` (by class name)."""
    evaluator = run_cocoeval(groundtruth, detections)
    return {**summary_metrics(evaluator), "per_class": per_class_metrics(evaluator)}


def save_coco(groundtruth: dict, detections: list[dict], output_dir: str | Path) -> None:
    """Write ``groundtruth.json`` and ``detections.json`` (COCO format) into ``output_dir``."""
    files.write_json_atomic(Path(output_dir) / layout.GROUNDTRUTH_FILE, groundtruth)
    files.write_json_atomic(Path(output_dir) / layout.DETECTIONS_FILE, detections)
