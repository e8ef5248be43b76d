"""Stage ``export``: export the trained checkpoint through ``exporter_main_v2``, then smoke-test.

The SavedModel is written to ``<output>.partial`` and moved to ``<output>`` only after it has
loaded and returned detections of the expected shapes for one test image, so a failed export
never leaves a directory that looks usable.
"""
from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

from pipeline import compat, tracking
from pipeline.errors import PipelineError
from pipeline.params import Params

log = logging.getLogger(__name__)

DETECTION_KEYS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=Path("models/pipeline.config"))
    parser.add_argument("--model-dir", type=Path, default=Path("models/train"),
                        help="training directory holding the checkpoints")
    parser.add_argument("--data", type=Path, default=Path("data/tfrecords"),
                        help="convert output; one test image is used for the smoke check")
    parser.add_argument("--output", type=Path, default=Path("models/exported"))


def run(args: argparse.Namespace, params: Params) -> None:
    if not (args.model_dir / "checkpoint").is_file():
        raise PipelineError(f"no checkpoint in {args.model_dir} (run the train stage first)")
    staging = args.output.with_name(args.output.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    export_with_exporter_main(args.config, args.model_dir, staging, params.export.input_type)
    shapes = smoke_test(staging / "saved_model", first_test_example(args.data),
                        params.export.input_type)
    run_id = tracking.read_run_file(args.model_dir)
    if run_id:
        tracking.write_run_file(staging, run_id)
    shutil.rmtree(args.output, ignore_errors=True)
    staging.rename(args.output)
    log.info("exported %s; smoke check on one test image: %s", args.output, shapes)
    with tracking.start_run(params.mlflow, "export", run_id=run_id) as mlflow:
        mlflow.log_param("export.input_type", params.export.input_type)
        mlflow.log_artifact(str(args.output / "pipeline.config"), "export")


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


def first_test_example(data_dir: Path) -> bytes:
    """The first serialized tf.Example of the test split (falling back to val, then train)."""
    import tensorflow as tf

    for split in ("test", "val", "train"):
        files = sorted(str(p) for p in data_dir.glob(f"{split}.tfrecord-*"))
        for record in tf.data.TFRecordDataset(files).take(1):
            return record.numpy()
    raise PipelineError(f"no TFRecords in {data_dir} to smoke-test the exported model with")


def model_input(example: bytes, input_type: str):
    """The batch of one that a SavedModel exported with ``input_type`` expects."""
    import tensorflow as tf

    if input_type == "tf_example":
        return tf.constant([example])
    features = tf.io.parse_single_example(
        example, {"image/encoded": tf.io.FixedLenFeature([], tf.string)})
    encoded = features["image/encoded"]
    if input_type == "encoded_image_string_tensor":
        return tf.expand_dims(encoded, 0)
    return tf.expand_dims(tf.io.decode_image(encoded, channels=3, expand_animations=False), 0)


def smoke_test(saved_model_dir: Path, example: bytes, input_type: str) -> dict[str, list[int]]:
    """Load the SavedModel, run it on one example and check the detection outputs' shapes."""
    import tensorflow as tf

    detect = tf.saved_model.load(str(saved_model_dir)).signatures["serving_default"]
    outputs = detect(input_tensor=model_input(example, input_type))
    missing = [k for k in DETECTION_KEYS if k not in outputs]
    if missing:
        raise PipelineError(f"exported model returned no {missing}; got {sorted(outputs)}")
    shapes = {k: outputs[k].shape.as_list() for k in DETECTION_KEYS}
    n = shapes["detection_scores"][1]
    expected = {"detection_boxes": [1, n, 4], "detection_scores": [1, n],
                "detection_classes": [1, n], "num_detections": [1]}
    if shapes != expected:
        raise PipelineError(f"exported model's outputs have shapes {shapes}, expected {expected}")
    return shapes
