"""The report's timed runs: every test image through a detector, one at a time (batch 1, as a
deployed detector would run), with the latency of each model call.

Latency is wall time around the runner's call (the model call, the fetch of its outputs and
their trimming to :class:`~pipeline.odapi.detector.Detections`); reading records and building
the model input (JPEG decoding for ``image_tensor`` models) are not included. The first
``warmup_images`` images are run once more, untimed, before their timed run, so tracing and
memory allocation do not count.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import tensorflow as tf

from pipeline.core import layout, progress
from pipeline.core.errors import PipelineError
from pipeline.evaluation import coco as coco_eval
from pipeline.evaluation.coco import GroundTruthImage, ImageDetections
from pipeline.evaluation.test_records import Sample, read_samples
from pipeline.odapi.detector import Detections, Detector

log = logging.getLogger(__name__)

_LOG_EVERY = 50  # images between progress lines when stderr is not a terminal (no tqdm bar)


@dataclass(frozen=True)
class TestRun:
    """A detector's results on the test split, in record order."""

    truths: list[GroundTruthImage]
    detections: list[ImageDetections]
    images: list[bytes]  # encoded JPEG/PNG: small to keep, decoded again for the pictures
    latencies: list[float]  # ms per model call

    __test__ = False  # not a pytest test class despite its name


def run_saved_model(detector: Detector, files: list[str], warmup_images: int) -> TestRun:
    """Run ``detector`` on every test record of ``files``; PipelineError if there is none."""
    run = TestRun([], [], [], [])
    total = progress.count_records(files) if progress.shown() else None
    with progress.Bar(read_samples(files), desc="report", unit="img", total=total) as bar:
        for index, sample in enumerate(bar):
            run_one(detector, sample, index < warmup_images, run)
            if bar.disable and (index + 1) % _LOG_EVERY == 0:
                log.info("evaluated %d images", index + 1)
    if not run.truths:
        raise PipelineError(f"the test split is empty: no records in {files}")
    return run


def run_one(detector: Detector, sample: Sample, warmup: bool, run: TestRun) -> None:
    """Add ``detector``'s timed results on one test ``sample`` to ``run`` (``warmup``: run it
    once untimed first)."""
    inputs = detector.example_input(sample.serialized, sample.encoded)
    if warmup:
        detector(inputs)  # untimed: the first calls trace and allocate
    detections = _timed(detector, inputs, run.latencies)
    run.truths.append(sample.truth)
    run.images.append(sample.encoded)
    run.detections.append(image_detections(sample.truth, detections))


def tflite_metrics(model_dir: Path, truths: list[GroundTruthImage], images: list[bytes],
                   categories: dict[int, str]) -> dict[str, dict]:
    """COCO mAP, mAP@0.5 and latency of each TFLite model in ``model_dir/tflite`` (if any)."""
    from pipeline.odapi import tflite

    results = {}
    groundtruth = coco_eval.groundtruth_dict(truths, categories)
    detectors = tflite.TfliteDetector.load_all(model_dir / layout.TFLITE_DIR)
    for precision, detector in detectors.items():
        detections, latencies = [], []
        with progress.Bar(list(zip(truths, images)), desc=f"tflite {precision}",
                          unit="img") as bar:
            for truth, encoded in bar:
                image = tf.io.decode_image(encoded, channels=3, expand_animations=False).numpy()
                detections.append(image_detections(truth, _timed(detector, image, latencies)))
        evaluator = coco_eval.run_cocoeval(groundtruth, coco_eval.detections_list(detections))
        summary = coco_eval.summary_metrics(evaluator)
        results[precision] = {"map": summary["map"], "map_50": summary["map_50"],
                              **speed(latencies)}
    return results


def _timed(detector: Callable[[Any], Detections], inputs: Any,
           latencies: list[float]) -> Detections:
    start = time.perf_counter()
    detections = detector(inputs)
    latencies.append((time.perf_counter() - start) * 1000.0)
    return detections


def image_detections(truth: GroundTruthImage, detections: Detections) -> ImageDetections:
    """A runner's detections on the test image ``truth``, as the COCO/VOC scoring takes them."""
    return ImageDetections(image_id=truth.image_id, width=truth.width, height=truth.height,
                           boxes=detections.boxes, scores=detections.scores,
                           classes=detections.classes)


def speed(latencies: list[float]) -> dict[str, Any]:
    """``latency_ms`` (p50, p95, mean) and ``images_per_second`` of per-image latencies (ms)."""
    ms = np.asarray(latencies)
    return {
        "latency_ms": {"p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)),
                       "mean": float(ms.mean())},
        "images_per_second": float(1000.0 * len(ms) / ms.sum()) if ms.sum() > 0 else None,
    }
