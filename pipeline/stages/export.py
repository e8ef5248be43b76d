"""Stage ``export``: export the trained checkpoint through ``exporter_main_v2``, then verify it.

The SavedModel is written to ``<output>.partial``. Before it is moved to ``<output>`` it is
loaded and run on ``export.verify_images`` test images, and its detections are compared with
those of the checkpoint itself (the detection model built from pipeline.config with the OD
API's ``model_builder``, the checkpoint restored, ``preprocess`` / ``predict`` /
``postprocess`` run on the same decoded images). Tolerance (``export.verify_tolerance``,
default 1e-3): every one of the checkpoint's top :data:`TOP_K` detections per image must have
a SavedModel detection of the same class whose score and normalised box coordinates all
differ by at most the tolerance. On any mismatch the stage fails and removes the staging
directory, so a failed export never leaves a directory that looks usable.

When ``export.tflite`` lists precisions and the model is an SSD, TFLite models are written to
``<output>/tflite/`` as well (see :mod:`pipeline.odapi.tflite`).
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core import layout
from pipeline.core import compat
from pipeline.tracking import journal as tracking
from pipeline.core.errors import PipelineError
from pipeline.core.files import staged_output
from pipeline.core.params import Params
from pipeline.odapi.detector import DETECTION_KEYS, decode_example_image, encoded_image

log = logging.getLogger(__name__)

TOP_K = 20  # checkpoint detections per image that must be reproduced by the SavedModel


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the stage's command-line options."""
    parser.add_argument("--config", type=Path, default=layout.PIPELINE_CONFIG)
    parser.add_argument("--model-dir", type=Path, default=layout.MODEL_DIR / layout.BEST_DIR,
                        help="directory holding the checkpoint to export")
    parser.add_argument("--data", type=Path, default=layout.RECORDS_DIR,
                        help="convert output; test images (train images for int8 TFLite)")
    parser.add_argument("--output", type=Path, default=layout.EXPORT_DIR)


def run(args: argparse.Namespace, params: Params) -> None:
    """Export, verify, optionally convert to TFLite, then publish ``--output`` atomically."""
    if not (args.model_dir / "checkpoint").is_file():
        raise PipelineError(f"no checkpoint in {args.model_dir} (run the train stage first)")
    with staged_output(args.output, [args.config, args.model_dir, args.data]) as staging:
        summary = _export_and_verify(args, params, staging)  # failure: nothing half-made stays
        tracking.link_run(args.model_dir, staging)
    log.info("exported and verified %s: %s", args.output, summary)
    _log_to_mlflow(params, args.output, args.model_dir, summary)


def _export_and_verify(args: argparse.Namespace, params: Params, staging: Path) -> dict:
    settings = params.export
    export_with_exporter_main(args.config, args.model_dir, staging, settings.input_type)
    _copy_label_map(args.data, staging)
    examples = test_examples(args.data, settings.verify_images)
    summary = verify_export(staging / layout.SAVED_MODEL_DIR, args.config, args.model_dir, examples,
                            settings.input_type, settings.verify_tolerance)
    if settings.tflite:
        from pipeline.odapi import tflite

        summary["tflite"] = tflite.export_all(args.config, args.model_dir, args.data,
                                              staging / layout.TFLITE_DIR, settings)
    (staging / layout.VERIFICATION_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _copy_label_map(data_dir: Path, staging: Path) -> None:
    # The export directory is self-contained: `predict` names classes from this copy.
    label_map = data_dir / layout.LABEL_MAP
    if not label_map.is_file():
        raise PipelineError(f"label map {label_map} not found; run the convert stage first")
    shutil.copy(label_map, staging / layout.LABEL_MAP)


def _log_to_mlflow(params: Params, output: Path, model_dir: Path, summary: dict) -> None:
    """Record an export run nested under the training run (sent now or kept for sync)."""
    journal = tracking.stage_journal(params.mlflow, "export", parent=model_dir)
    journal.params(tracking.flatten_params(params, ("export",)))
    journal.values({key: summary[key] for key in ("max_score_difference",
                                                  "max_box_difference")}, prefix="export.")
    for path in (output / layout.PIPELINE_CONFIG.name, output / layout.VERIFICATION_FILE):
        journal.artifact(path, "export")
    tracking.finish(journal)


def export_with_exporter_main(config: Path, model_dir: Path, output: Path, input_type: str) -> None:
    """Run ``exporter_main_v2.main`` with its flags."""
    compat.apply()
    from absl import flags
    from object_detection import exporter_main_v2

    argv = [
        "exporter_main_v2",
        f"--input_type={input_type}",
        f"--pipeline_config_path={config}",
        f"--trained_checkpoint_dir={model_dir}",
        f"--output_directory={output}",
    ]
    flags.FLAGS(argv)
    exporter_main_v2.main(argv)


def test_examples(data_dir: Path, count: int) -> list[bytes]:
    """Up to ``count`` serialized tf.Examples of the test split (else val, else train)."""
    import tensorflow as tf

    for split in ("test", "val", "train"):
        files = layout.record_files(data_dir, split)
        examples = [r.numpy() for r in tf.data.TFRecordDataset(files).take(count)]
        if examples:
            return examples
    raise PipelineError(f"no TFRecords in {data_dir} to verify the exported model with")


test_examples.__test__ = False  # not a pytest test despite its name


def model_input(example: bytes, input_type: str):
    """The batch of one that a SavedModel exported with ``input_type`` expects."""
    import tensorflow as tf

    if input_type == "tf_example":
        return tf.constant([example])
    if input_type == "encoded_image_string_tensor":
        return tf.expand_dims(encoded_image(example), 0)
    return tf.constant(decode_example_image(example)[np.newaxis])


@dataclass(frozen=True)
class Detections:
    """One image's detections, sorted by descending score (classes are label-map ids)."""

    boxes: np.ndarray  # [N, 4] normalised ymin, xmin, ymax, xmax
    scores: np.ndarray  # [N]
    classes: np.ndarray  # [N] int

    @classmethod
    def from_outputs(cls, outputs: dict, class_offset: int = 0) -> Detections:
        """From detection tensors of batch 1 (the exporter adds 1 to the model's class ids)."""
        count = int(np.asarray(outputs["num_detections"]).reshape(-1)[0])
        boxes = np.asarray(outputs["detection_boxes"])[0, :count]
        scores = np.asarray(outputs["detection_scores"])[0, :count]
        classes = np.rint(np.asarray(outputs["detection_classes"])[0, :count]) + class_offset
        order = np.argsort(-scores, kind="stable")
        return cls(boxes[order], scores[order], classes[order].astype(np.int64))


def saved_model_detections(saved_model_dir: Path, examples: list[bytes],
                           input_type: str) -> list[Detections]:
    """Run the exported SavedModel's ``serving_default`` on each example (batch 1)."""
    import tensorflow as tf

    detect = tf.saved_model.load(str(saved_model_dir)).signatures["serving_default"]
    results = []
    for example in examples:
        outputs = detect(input_tensor=model_input(example, input_type))
        missing = [k for k in DETECTION_KEYS if k not in outputs]
        if missing:
            raise PipelineError(f"exported model returned no {missing}; got {sorted(outputs)}")
        results.append(Detections.from_outputs({k: outputs[k].numpy() for k in DETECTION_KEYS}))
    return results


def checkpoint_detections(config: Path, checkpoint_dir: Path,
                          images: list[np.ndarray]) -> list[Detections]:
    """Detections of the latest checkpoint in ``checkpoint_dir``, built from ``config``."""
    compat.apply()
    import tensorflow as tf
    from object_detection.builders import model_builder
    from object_detection.utils import config_util

    configs = config_util.get_configs_from_pipeline_file(str(config))
    model = model_builder.build(configs["model"], is_training=False)
    latest = tf.train.latest_checkpoint(str(checkpoint_dir))
    if latest is None:
        raise PipelineError(f"no checkpoint in {checkpoint_dir}")
    tf.train.Checkpoint(model=model).restore(latest).expect_partial()
    results = []
    for image in images:
        batch = tf.cast(tf.constant(image[np.newaxis]), tf.float32)
        preprocessed, shapes = model.preprocess(batch)
        outputs = model.postprocess(model.predict(preprocessed, shapes), shapes)
        outputs = {k: outputs[k].numpy() for k in DETECTION_KEYS}
        results.append(Detections.from_outputs(outputs, class_offset=1))
    return results


def verify_export(saved_model_dir: Path, config: Path, checkpoint_dir: Path,
                  examples: list[bytes], input_type: str, tolerance: float) -> dict:
    """Compare the SavedModel's detections with the checkpoint's; PipelineError if they differ.

    Returns the figures of the comparison (images, detections compared, largest differences).
    """
    images = [decode_example_image(e) for e in examples]
    expected = checkpoint_detections(config, checkpoint_dir, images)
    actual = saved_model_detections(saved_model_dir, examples, input_type)
    score_diff = box_diff = 0.0
    compared = 0
    for index, (want, got) in enumerate(zip(expected, actual)):
        for k in range(min(TOP_K, len(want.scores))):
            ds, db = _closest_match(want, k, got)
            if ds > tolerance or db > tolerance:
                raise PipelineError(
                    f"exported model disagrees with checkpoint {checkpoint_dir} on test image "
                    f"{index}: detection {k} (class {want.classes[k]}, score "
                    f"{want.scores[k]:.4f}) has no match within tolerance {tolerance} "
                    f"(closest: score diff {ds:.4g}, box diff {db:.4g})")
            score_diff, box_diff, compared = max(score_diff, ds), max(box_diff, db), compared + 1
    return {"verified_images": len(images), "compared_detections": compared,
            "tolerance": tolerance, "max_score_difference": score_diff,
            "max_box_difference": box_diff}


def _closest_match(want: Detections, k: int, got: Detections) -> tuple[float, float]:
    """(score difference, max box coordinate difference) to ``got``'s nearest same-class box."""
    same = np.flatnonzero(got.classes == want.classes[k])
    if same.size == 0:
        return float("inf"), float("inf")
    score_diffs = np.abs(got.scores[same] - want.scores[k])
    box_diffs = np.abs(got.boxes[same] - want.boxes[k]).max(axis=1)
    best = int(np.argmin(np.maximum(score_diffs, box_diffs)))
    return float(score_diffs[best]), float(box_diffs[best])
