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
- ``per_class.csv`` / ``per_class.md``, ``report.html`` (self-contained: what produced it, the
  training curves when ``OUTPUT`` holds the train stage's CSVs, every image embedded),
  ``plots/pr_curve.png`` + ``.csv``, ``plots/confusion_matrix.png`` + ``.csv`` and
  ``images/sample_*.png`` / ``images/worst_*.png`` (ground truth left, predictions right).

Test records are read by :mod:`pipeline.evaluation.test_records`, the timed runs (latency: see
:mod:`pipeline.evaluation.inference`) use the one runner :class:`pipeline.odapi.detector.Detector`.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Sequence

from pipeline.core import layout
from pipeline.core.params import Params, ReportParams
from pipeline.tracking import journal as tracking
from pipeline.tracking import provenance

log = logging.getLogger(__name__)

CONFUSION_IOU = 0.5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the stage's command-line options."""
    parser.add_argument("--model", type=Path, default=layout.EXPORT_DIR,
                        help="export directory containing saved_model/ (default: models/exported)")
    parser.add_argument("--data", type=Path, default=layout.RECORDS_DIR,
                        help="directory with test.tfrecord-* and label_map.pbtxt "
                             "(default: data/tfrecords)")
    parser.add_argument("--output", type=Path, default=layout.REPORTS_DIR,
                        help="directory for metrics.json, COCO files and plots (default: reports)")


def run(args: argparse.Namespace, params: Params) -> dict[str, Any]:
    """Evaluate, log to MLflow, register the model; return the metrics of ``metrics.json``."""
    about = provenance.report_provenance(params, Path(args.model), Path(args.data))
    metrics = evaluate(args.model, args.data, args.output, params.report, about)
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
        from pipeline.evaluation import test_records
        from pipeline.tracking import registry

        registry.record_registration(journal, params.report.registered_model, model_dir,
                                     metrics, registry.split_hash(data_dir),
                                     test_records.read_label_map(data_dir / layout.LABEL_MAP))
    tracking.finish(journal)


def evaluate(model_dir: str | Path, data_dir: str | Path, output_dir: str | Path,
             settings: ReportParams = ReportParams(),
             about: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    """Run the model on every test record, score it and write the report files (the page
    says what produced it: ``about``)."""
    # Imported here, not at the top: `report --help` must not load TensorFlow.
    from pipeline.evaluation import coco as coco_eval
    from pipeline.evaluation import confusion, inference, test_records
    from pipeline.evaluation import outputs as report_outputs
    from pipeline.evaluation import voc as voc_eval
    from pipeline.odapi.detector import Detector

    data_dir, output_dir = Path(data_dir), Path(output_dir)
    files = test_records.find_test_records(data_dir)
    categories = test_records.read_label_map(data_dir / layout.LABEL_MAP)
    detector = Detector.load(model_dir)
    run = inference.run_saved_model(detector, files, settings.warmup_images)
    test_records.check_class_ids(run.truths, categories)
    groundtruth = coco_eval.groundtruth_dict(run.truths, categories)
    results = coco_eval.detections_list(run.detections)
    evaluator = coco_eval.run_cocoeval(groundtruth, results)
    voc = voc_eval.pascal_voc_metrics(run.truths, run.detections, categories)
    matrix = confusion.confusion_matrix(run.truths, run.detections, categories, CONFUSION_IOU,
                                        settings.score_threshold)
    metrics = {
        **coco_eval.summary_metrics(evaluator),
        "pascal_voc_map_50": voc["map_50"],
        "per_class": _per_class(coco_eval.per_class_metrics(evaluator), voc["per_class"]),
        **inference.speed(run.latencies),
        "num_images": len(run.truths),
        "num_detections": len(results),
        "confusion": {"iou": CONFUSION_IOU, "score_threshold": settings.score_threshold},
    }
    tflite = inference.tflite_metrics(Path(model_dir), run.truths, run.images, categories)
    if tflite:
        metrics["tflite"] = tflite
    report_outputs.write_all(output_dir, metrics, groundtruth, results, evaluator, matrix,
                             report_outputs.Pictures(run.truths, run.detections, run.images,
                                                     categories, settings.sample_images,
                                                     settings.worst_images,
                                                     settings.score_threshold), about)
    return metrics


def _per_class(coco: dict[str, dict], voc: dict[str, float | None]) -> dict[str, dict]:
    return {name: {**scores, "voc_ap50": voc.get(name)} for name, scores in coco.items()}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
