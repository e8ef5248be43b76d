"""Stage ``report``: evaluate the exported SavedModel (and its TFLite models) on the test split.

Reads ``DATA/test.tfrecord-*`` and ``DATA/label_map.pbtxt``, runs ``MODEL/saved_model`` one
image at a time (batch 1, as a deployed detector would) and writes into ``OUTPUT``:

- ``metrics.json``: the 12 COCO box metrics of pycocotools' summary (see
  :mod:`pipeline.evaluation.coco`; ``null`` = no ground truth in that bucket), ``pascal_voc_map_50``
  (the OD API's ``PascalDetectionEvaluator``), ``per_class`` AP / AP50 / VOC AP50,
  ``latency_ms`` (p50, p95, mean), ``images_per_second``, ``num_images``, ``num_detections``,
  ``confusion`` thresholds and, when the export wrote TFLite models, ``tflite`` (mAP, mAP@0.5
  and latency per precision). Written last and atomically, so it only exists when the whole
  evaluation succeeded.
- ``groundtruth.json`` and ``detections.json``: the COCO files the metrics come from
  (re-scoring them with plain pycocotools gives the same numbers).
- ``per_class.csv`` / ``per_class.md``, ``report.html`` (self-contained: every image embedded),
  ``plots/pr_curve.png`` + ``.csv``, ``plots/confusion_matrix.png`` + ``.csv`` and
  ``images/sample_*.png`` / ``images/worst_*.png`` (ground truth left, predictions right).

Latency is wall time around the model call plus the conversion of its outputs to numpy;
reading records and, for ``image_tensor`` models, JPEG decoding are not included. The first
``report.warmup_images`` images are run once more, untimed, before their timed run, so
tracing and memory allocation do not count.
"""
from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from pipeline.core import layout
from pipeline.evaluation import coco as coco_eval
from pipeline.evaluation import confusion
from pipeline.data import labelmap
from pipeline.evaluation import outputs as report_outputs
from pipeline.tracking import journal as tracking
from pipeline.evaluation import voc as voc_eval
from pipeline.evaluation.coco import GroundTruthImage, ImageDetections
from pipeline.core.errors import PipelineError
from pipeline.core.params import Params, ReportParams
from pipeline.odapi.detector import Detector

log = logging.getLogger(__name__)

_LOG_EVERY = 50  # images between progress lines when stderr is not a terminal (no tqdm bar)
CONFUSION_IOU = 0.5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the stage's command-line options."""
    parser.add_argument("--model", type=Path, default=layout.EXPORT_DIR,
                        help="export directory containing saved_model/ (default: models/exported)")
    parser.add_argument("--data", type=Path, default=layout.RECORDS_DIR,
                        help="directory with test.tfrecord-* and label_map.pbtxt "
                             "(default: data/tfrecords)")
    parser.add_argument("--output", type=Path, default=Path("reports"),
                        help="directory for metrics.json, COCO files and plots (default: reports)")


def run(args: argparse.Namespace, params: Params) -> dict[str, Any]:
    """Evaluate, log to MLflow, register the model; return the metrics of ``metrics.json``."""
    metrics = evaluate(args.model, args.data, args.output, params.report)
    log_to_mlflow(params, Path(args.model), Path(args.data), Path(args.output), metrics)
    log.info("mAP %s, mAP@0.5 %s, %s images/s on %d test images; wrote %s",
             _fmt(metrics["map"]), _fmt(metrics["map_50"]), _fmt(metrics["images_per_second"]),
             metrics["num_images"], Path(args.output) / layout.REPORT_HTML)
    return metrics


def log_to_mlflow(params: Params, model_dir: Path, data_dir: Path, output_dir: Path,
                  metrics: dict) -> None:
    """Record a report run nested under the model's training run: params, test metrics, the
    report files and the registration of the model (sent now, or kept for ``sync-mlflow``)."""
    journal = tracking.stage_journal(params.mlflow, "report", parent=model_dir)
    journal.params({f"report.{k}": v for k, v in vars(params.report).items()})
    journal.values(metrics, prefix="test.")
    for path in sorted(p for p in output_dir.rglob("*") if p.is_file()):
        journal.artifact(path, str(Path("report") / path.parent.relative_to(output_dir)))
    if params.report.registered_model:
        from pipeline.tracking import registry

        registry.record_registration(journal, params.report.registered_model, model_dir,
                                     metrics, registry.split_hash(data_dir))
    tracking.finish(journal)


def evaluate(model_dir: str | Path, data_dir: str | Path, output_dir: str | Path,
             settings: ReportParams = ReportParams()) -> dict[str, Any]:
    """Run the model on every test record, score it and write the report files."""
    data_dir, output_dir = Path(data_dir), Path(output_dir)
    files = find_test_records(data_dir)
    categories = read_label_map(data_dir / layout.LABEL_MAP)
    detector = Detector.load(model_dir)
    truths, detections, images, latencies = _infer_all(detector, files, settings.warmup_images)
    _check_class_ids(truths, categories)
    groundtruth = coco_eval.groundtruth_dict(truths, categories)
    results = coco_eval.detections_list(detections)
    evaluator = coco_eval.run_cocoeval(groundtruth, results)
    voc = voc_eval.pascal_voc_metrics(truths, detections, categories)
    matrix = confusion.confusion_matrix(truths, detections, categories, CONFUSION_IOU,
                                        settings.score_threshold)
    metrics = {
        **coco_eval.summary_metrics(evaluator),
        "pascal_voc_map_50": voc["map_50"],
        "per_class": _per_class(coco_eval.per_class_metrics(evaluator), voc["per_class"]),
        **_speed(latencies),
        "num_images": len(truths),
        "num_detections": len(results),
        "confusion": {"iou": CONFUSION_IOU, "score_threshold": settings.score_threshold},
    }
    tflite = evaluate_tflite(Path(model_dir), truths, images, categories)
    if tflite:
        metrics["tflite"] = tflite
    report_outputs.write_all(output_dir, metrics, groundtruth, results, evaluator, matrix,
                             report_outputs.Pictures(truths, detections, images, categories,
                                                     settings.sample_images,
                                                     settings.worst_images,
                                                     settings.score_threshold))
    return metrics


def _per_class(coco: dict[str, dict], voc: dict[str, float | None]) -> dict[str, dict]:
    return {name: {**scores, "voc_ap50": voc.get(name)} for name, scores in coco.items()}


def evaluate_tflite(model_dir: Path, truths: list[GroundTruthImage], images: list[bytes],
                    categories: dict[int, str]) -> dict[str, dict]:
    """COCO mAP, mAP@0.5 and latency of each TFLite model in ``model_dir/tflite`` (if any)."""
    from pipeline.odapi import tflite

    results = {}
    for precision, detector in tflite.TfliteDetector.load_all(model_dir / layout.TFLITE_DIR).items():
        detections, latencies = [], []
        for truth, encoded in tqdm(list(zip(truths, images)), desc=f"tflite {precision}",
                                   unit="img", disable=None):
            image = tf.io.decode_image(encoded, channels=3, expand_animations=False).numpy()
            start = time.perf_counter()
            outputs = detector(image)
            latencies.append((time.perf_counter() - start) * 1000.0)
            detections.append(_detections(truth, {k: v[0] for k, v in outputs.items()}))
        evaluator = coco_eval.run_cocoeval(coco_eval.groundtruth_dict(truths, categories),
                                           coco_eval.detections_list(detections))
        summary = coco_eval.summary_metrics(evaluator)
        results[precision] = {"map": summary["map"], "map_50": summary["map_50"],
                              **_speed(latencies)}
    return results


# --- inputs -----------------------------------------------------------------------------------


def find_test_records(data_dir: Path) -> list[str]:
    """The sorted ``test.tfrecord-*`` shards in ``data_dir``; PipelineError if there are none."""
    if not data_dir.is_dir():
        raise PipelineError(f"data directory {data_dir} not found; run the convert stage first")
    files = layout.record_files(data_dir, "test")
    if not files:
        raise PipelineError(f"no test records ({layout.shard_pattern('test')}) in {data_dir}; "
                            "run the convert stage with a non-empty test split")
    return files


def read_label_map(path: Path) -> dict[int, str]:
    """``{id: name}`` from an OD API ``label_map.pbtxt``; PipelineError if missing or invalid."""
    if not path.is_file():
        raise PipelineError(f"label map {path} not found; run the convert stage first")
    categories = {cid: name for name, cid in labelmap.read_label_map(path).items()}
    if not categories:
        raise PipelineError(f"label map {path} has no items")
    return categories


def _check_class_ids(truths: list[GroundTruthImage], categories: dict[int, str]) -> None:
    # COCOeval silently ignores annotations of unknown categories; that would inflate scores.
    used = {int(c) for t in truths for c in t.classes}
    unknown = sorted(used - set(categories))
    if unknown:
        raise PipelineError(f"test records use class id(s) {unknown} that label_map.pbtxt lacks")


def _features() -> dict[str, Any]:
    return {
        "image/encoded": tf.io.FixedLenFeature([], tf.string),
        "image/height": tf.io.FixedLenFeature([], tf.int64),
        "image/width": tf.io.FixedLenFeature([], tf.int64),
        "image/filename": tf.io.FixedLenFeature([], tf.string, default_value=""),
        "image/source_id": tf.io.FixedLenFeature([], tf.string, default_value=""),
        **{f"image/object/bbox/{k}": tf.io.VarLenFeature(tf.float32)
           for k in ("ymin", "xmin", "ymax", "xmax")},
        "image/object/class/label": tf.io.VarLenFeature(tf.int64),
        "image/object/is_crowd": tf.io.VarLenFeature(tf.int64),
        "image/object/area": tf.io.VarLenFeature(tf.float32),
    }


def _parse(serialized: tf.Tensor) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
    parsed = tf.io.parse_single_example(serialized, _features())
    dense = {k: tf.sparse.to_dense(v) if isinstance(v, tf.SparseTensor) else v
             for k, v in parsed.items()}
    return serialized, dense


@dataclass(frozen=True)
class Sample:
    """One test record: the raw tf.Example, its parsed features and its ground truth."""

    serialized: bytes  # the whole tf.Example (input of tf_example models)
    features: dict[str, np.ndarray]
    truth: GroundTruthImage


def read_samples(files: list[str]) -> Iterator[Sample]:
    """Yield the test images with their ground truth; COCO image ids are 1, 2, ... in order."""
    # No prefetching or autotuning: background tf.data threads would share the CPU with the
    # timed model calls and skew the latency figures; reading a record is cheap.
    options = tf.data.Options()
    options.autotune.enabled = False
    dataset = tf.data.TFRecordDataset(files).map(_parse).with_options(options)
    try:
        for image_id, (serialized, features) in enumerate(dataset, start=1):
            features = {k: v.numpy() for k, v in features.items()}
            yield Sample(serialized.numpy(), features, _truth(image_id, features))
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as err:
        raise PipelineError(f"cannot read test records {files}: {err.message}") from None


def _truth(image_id: int, f: dict[str, np.ndarray]) -> GroundTruthImage:
    boxes = np.stack([f[f"image/object/bbox/{k}"] for k in ("ymin", "xmin", "ymax", "xmax")], 1)
    count = len(boxes)
    crowd, area = f["image/object/is_crowd"], f["image/object/area"]
    name = f["image/filename"].decode() or f["image/source_id"].decode() or str(image_id)
    return GroundTruthImage(
        image_id=image_id, file_name=name,
        width=int(f["image/width"]), height=int(f["image/height"]),
        boxes=boxes, classes=f["image/object/class/label"],
        # Optional keys: absent -> not crowd, area from the box.
        is_crowd=crowd if len(crowd) == count else None,
        area=area if len(area) == count else None,
    )


def _infer_all(detector: Detector, files: list[str], warmup_images: int
               ) -> tuple[list[GroundTruthImage], list[ImageDetections], list[bytes], list[float]]:
    truths, detections, images, latencies = [], [], [], []
    progress = tqdm(read_samples(files), desc="report", unit="img", disable=None)
    for index, sample in enumerate(progress):
        inputs = detector.model_input(sample)
        if index < warmup_images:
            detector(inputs)  # untimed: the first calls trace and allocate
        start = time.perf_counter()
        outputs = detector(inputs)
        latencies.append((time.perf_counter() - start) * 1000.0)
        truths.append(sample.truth)
        images.append(sample.features["image/encoded"])  # JPEG/PNG bytes: small to keep
        detections.append(_detections(sample.truth, outputs))
        if progress.disable and (index + 1) % _LOG_EVERY == 0:
            log.info("evaluated %d images", index + 1)
    if not truths:
        raise PipelineError(f"the test split is empty: no records in {files}")
    return truths, detections, images, latencies


def _detections(truth: GroundTruthImage, outputs: dict[str, np.ndarray]) -> ImageDetections:
    count = int(outputs["num_detections"])  # outputs are padded to max_detections
    return ImageDetections(
        image_id=truth.image_id, width=truth.width, height=truth.height,
        boxes=outputs["detection_boxes"][:count], scores=outputs["detection_scores"][:count],
        classes=np.rint(outputs["detection_classes"][:count]).astype(np.int64),
    )


def _speed(latencies: list[float]) -> dict[str, Any]:
    ms = np.asarray(latencies)
    return {
        "latency_ms": {"p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)),
                       "mean": float(ms.mean())},
        "images_per_second": float(1000.0 * len(ms) / ms.sum()) if ms.sum() > 0 else None,
    }


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
