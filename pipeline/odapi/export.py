"""Export a trained checkpoint through ``exporter_main_v2``, then verify it against the checkpoint.

The exported SavedModel is loaded with :class:`pipeline.odapi.detector.Detector` and run on
``export.verify_images`` test images; the checkpoint itself is run on the same decoded images
(the detection model built from pipeline.config with the OD API's ``model_builder``, the
checkpoint restored, ``preprocess`` / ``predict`` / ``postprocess``). Tolerance
(``export.verify_tolerance``, default 1e-3): every one of the checkpoint's top :data:`TOP_K`
detections per image must have a SavedModel detection of the same class whose score and
normalised box coordinates all differ by at most the tolerance; otherwise PipelineError.

When ``export.tflite`` lists precisions and the model is an SSD, TFLite models are written
too (see :mod:`pipeline.odapi.tflite`).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core import compat
from pipeline.core import layout, progress
from pipeline.core.errors import PipelineError
from pipeline.core.files import write_json_atomic
from pipeline.odapi.detector import DETECTION_KEYS, Detections, Detector, decode_example_image

TOP_K = 20  # checkpoint detections per image that must be reproduced by the SavedModel


def export_and_verify(config: Path, model_dir: Path, data_dir: Path, output: Path,
                      settings: Any) -> dict:
    """Export ``model_dir``'s checkpoint into ``output``, verify it, add the TFLite models and
    the label map; write and return the verification summary. ``settings``: ``params.export``."""
    export_with_exporter_main(config, model_dir, output, settings.input_type)
    copy_label_map(data_dir, output)
    examples = test_examples(data_dir, settings.verify_images)
    summary = verify_export(output, config, model_dir, examples, settings.verify_tolerance)
    if settings.tflite:
        from pipeline.odapi import tflite

        summary["tflite"] = tflite.export_all(config, model_dir, data_dir,
                                              output / layout.TFLITE_DIR, settings)
    write_json_atomic(output / layout.VERIFICATION_FILE, summary)
    return summary


def copy_label_map(data_dir: Path, output: Path) -> None:
    """Copy the records' label map into the export (``predict`` names classes from it)."""
    label_map = data_dir / layout.LABEL_MAP
    if not label_map.is_file():
        raise PipelineError(f"label map {label_map} not found; run the convert stage first")
    shutil.copy(label_map, output / layout.LABEL_MAP)


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


def saved_model_detections(export_dir: Path, examples: list[bytes]) -> list[Detections]:
    """The exported SavedModel's detections on each example (batch 1, its own input type)."""
    detector = Detector.load(export_dir)
    with progress.Bar(examples, desc="verify: SavedModel", unit="img") as bar:
        return [detector(detector.example_input(example)) for example in bar]


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
    with progress.Bar(images, desc="verify: checkpoint", unit="img") as bar:
        return [model_detections(model, image) for image in bar]


def model_detections(model: Any, image: np.ndarray) -> Detections:
    """A detection model's detections on one decoded image (batch 1)."""
    import tensorflow as tf

    batch = tf.cast(tf.constant(image[np.newaxis]), tf.float32)
    preprocessed, shapes = model.preprocess(batch)
    outputs = model.postprocess(model.predict(preprocessed, shapes), shapes)
    return Detections.from_outputs({k: outputs[k].numpy() for k in DETECTION_KEYS},
                                   class_offset=1)


def verify_export(export_dir: Path, config: Path, checkpoint_dir: Path,
                  examples: list[bytes], tolerance: float) -> dict:
    """Compare the SavedModel's detections with the checkpoint's; PipelineError if they differ.

    Returns the figures of the comparison (images, detections compared, largest differences).
    """
    images = [decode_example_image(e) for e in examples]
    expected = checkpoint_detections(config, checkpoint_dir, images)
    actual = saved_model_detections(export_dir, examples)
    score_diff = box_diff = 0.0
    compared = 0
    for index, (want, got) in enumerate(zip(expected, actual)):
        for k in range(min(TOP_K, len(want))):
            ds, db = closest_match(want, k, got)
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


def closest_match(want: Detections, k: int, got: Detections) -> tuple[float, float]:
    """(score difference, max box coordinate difference) from ``want``'s detection ``k`` to
    ``got``'s nearest detection of the same class (infinite when there is none)."""
    same = np.flatnonzero(got.classes == want.classes[k])
    if same.size == 0:
        return float("inf"), float("inf")
    score_diffs = np.abs(got.scores[same] - want.scores[k])
    box_diffs = np.abs(got.boxes[same] - want.boxes[k]).max(axis=1)
    best = int(np.argmin(np.maximum(score_diffs, box_diffs)))
    return float(score_diffs[best]), float(box_diffs[best])
