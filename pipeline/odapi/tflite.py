"""TFLite models for SSD detectors: the OD API's TF2 TFLite graph export plus the TFLite converter.

``export_tflite_graph_lib_tf2.export_tflite_model`` writes an intermediate SavedModel whose
graph ends in the ``TFLite_Detection_PostProcess`` op; ``tf.lite.TFLiteConverter`` turns it into
``model_<precision>.tflite`` (float32, float16 weights, or int8 calibrated on train images).

The TFLite model takes a float32 ``[1, H, W, 3]`` image already resized and normalised the way
the detection model's own ``preprocess`` does; that normalisation (a scale and an offset per
pixel value, measured from ``preprocess`` itself) is saved in ``tflite.json`` next to the
models, so :class:`TfliteDetector` and users can feed the model correctly.

Only SSD meta-architectures with a ``fixed_shape_resizer`` are supported: the OD API's TFLite
export refuses Faster R-CNN, and EfficientDet (SSD + EfficientNet-BiFPN) resizes keeping the
aspect ratio, which its TFLite export cannot express.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core import layout
from pipeline.core import compat
from pipeline.core.errors import PipelineError
from pipeline.core.files import atomic_file, write_json_atomic
from pipeline.odapi.detector import Detections, decode_example_image

log = logging.getLogger(__name__)

META_FILE = layout.TFLITE_META


class TfliteUnsupported(PipelineError):
    """The detector's architecture cannot be exported to TFLite."""


def read_model_config(config: Path) -> Any:
    """The ``model`` message of a pipeline.config."""
    compat.apply()
    from object_detection.utils import config_util

    return config_util.get_configs_from_pipeline_file(str(config))["model"]


def check_supported(model_config: Any) -> None:
    """Raise :class:`TfliteUnsupported` (naming the architecture) unless a plain SSD."""
    arch = model_config.WhichOneof("model")
    if arch != "ssd":
        raise TfliteUnsupported(f"TFLite export is not supported for {arch} models "
                                "(only SSD; e.g. ssd_mobilenet_v2_fpnlite_cpu)")
    extractor = model_config.ssd.feature_extractor.type
    if "efficientnet" in extractor or "bifpn" in extractor:
        raise TfliteUnsupported(f"TFLite export is not supported for EfficientDet "
                                f"(feature extractor {extractor}); use an SSD MobileNet template")
    resizer = model_config.ssd.image_resizer.WhichOneof("image_resizer_oneof")
    if resizer != "fixed_shape_resizer":
        raise TfliteUnsupported(f"TFLite export is not supported with the {resizer} image "
                                "resizer (fixed_shape_resizer only)")


def export_all(config: Path, checkpoint_dir: Path, data_dir: Path, output: Path,
               settings: Any) -> dict:
    """Write one ``.tflite`` per ``settings.tflite`` precision; summary (or why not) returned.

    An unsupported architecture is not an error of the export stage: it is logged and
    recorded as ``{"unsupported": message}``.
    """
    model_config = read_model_config(config)
    try:
        check_supported(model_config)
    except TfliteUnsupported as err:
        log.warning("%s; no TFLite models written", err)
        return {"unsupported": str(err)}
    graph_dir = output / "graph"
    export_tflite_graph(config, checkpoint_dir, graph_dir, settings.tflite_max_detections)
    meta = {"input_size": _input_size(model_config), **measure_normalisation(model_config,
                                                                               checkpoint_dir)}
    models = {}
    for precision in settings.tflite:
        path = output / f"model_{precision}.tflite"
        representative = None
        if precision == "int8":
            representative = representative_images(data_dir, settings.representative_images, meta)
        model = convert(graph_dir / layout.SAVED_MODEL_DIR, precision, representative)
        with atomic_file(path) as partial:
            partial.write_bytes(model)
        models[precision] = {"file": path.name, "bytes": path.stat().st_size}
    shutil.rmtree(graph_dir)  # intermediate; the .tflite files are self-contained
    meta["models"] = models
    write_json_atomic(output / META_FILE, meta)
    return meta


def export_tflite_graph(config: Path, checkpoint_dir: Path, output: Path,
                        max_detections: int) -> None:
    """The OD API's TF2 TFLite graph export (``export_tflite_graph_tf2``) into ``output``."""
    compat.apply()
    from google.protobuf import text_format
    from object_detection import export_tflite_graph_lib_tf2
    from object_detection.protos import pipeline_pb2

    pipeline_config = pipeline_pb2.TrainEvalPipelineConfig()
    text_format.Parse(Path(config).read_text(), pipeline_config)
    export_tflite_graph_lib_tf2.export_tflite_model(
        pipeline_config, str(checkpoint_dir), str(output), max_detections, False)


def convert(saved_model_dir: Path, precision: str, representative: list[np.ndarray] | None
            ) -> bytes:
    """Convert the TFLite-ready SavedModel at one precision (float32, float16 or int8)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    if precision == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([image] for image in representative)
    return converter.convert()


def _input_size(model_config: Any) -> list[int]:
    resizer = model_config.ssd.image_resizer.fixed_shape_resizer
    return [resizer.height, resizer.width]


def measure_normalisation(model_config: Any, checkpoint_dir: Path) -> dict:
    """``{"scale", "offset"}`` such that ``preprocess(x) == x * scale + offset`` per pixel."""
    compat.apply()
    import tensorflow as tf
    from object_detection.builders import model_builder

    model = model_builder.build(model_config, is_training=False)
    height, width = _input_size(model_config)
    black, _ = model.preprocess(tf.zeros([1, height, width, 3]))
    white, _ = model.preprocess(tf.fill([1, height, width, 3], 255.0))
    offset = float(tf.reduce_mean(black))
    return {"scale": (float(tf.reduce_mean(white)) - offset) / 255.0, "offset": offset}


def prepare(image: np.ndarray, meta: dict) -> np.ndarray:
    """A uint8 ``[H, W, 3]`` image -> the TFLite model's float32 ``[1, h, w, 3]`` input."""
    import tensorflow as tf

    resized = tf.image.resize(tf.cast(image, tf.float32)[tf.newaxis], meta["input_size"])
    return (resized.numpy() * meta["scale"] + meta["offset"]).astype(np.float32)


def representative_images(data_dir: Path, count: int, meta: dict) -> list[np.ndarray]:
    """Up to ``count`` train-split images prepared as int8 calibration inputs."""
    import tensorflow as tf

    files = layout.record_files(data_dir, "train")
    if not files:
        raise PipelineError(f"no train records in {data_dir} to calibrate the int8 TFLite model")
    return [prepare(decode_example_image(r.numpy()), meta)
            for r in tf.data.TFRecordDataset(files).take(count)]


class TfliteDetector:
    """A ``.tflite`` SSD model run with ``tf.lite.Interpreter`` on uint8 images."""

    def __init__(self, path: Path, meta: dict):
        import tensorflow as tf

        self.meta = meta
        self.interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=1)
        self.interpreter.allocate_tensors()
        self.runner = self.interpreter.get_signature_runner()

    @classmethod
    def load_all(cls, tflite_dir: Path) -> dict[str, TfliteDetector]:
        """``{precision: detector}`` for every model listed in ``tflite_dir/tflite.json``."""
        meta_file = Path(tflite_dir) / META_FILE
        if not meta_file.is_file():
            return {}
        meta = json.loads(meta_file.read_text())
        return {precision: cls(Path(tflite_dir) / info["file"], meta)
                for precision, info in meta.get("models", {}).items()}

    def __call__(self, image: np.ndarray) -> Detections:
        """The valid detections on one uint8 ``[H, W, 3]`` image, best first, as the
        SavedModel's :class:`~pipeline.odapi.detector.Detector` returns them."""
        outputs = self.runner(**{self._input_name(): prepare(image, self.meta)})
        return Detections.from_outputs(outputs_by_meaning(outputs))

    def _input_name(self) -> str:
        return next(iter(self.runner.get_input_details()))


def outputs_by_meaning(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Name the TFLite detection outputs (``output_0`` .. ``output_3``) as the exporter does."""
    # TFLite_Detection_PostProcess returns boxes, classes, scores, num_detections; the
    # signature lists them in reverse: output_0 = num_detections ... output_3 = boxes.
    num, scores, classes, boxes = (outputs[f"output_{i}"] for i in range(4))
    # TFLite_Detection_PostProcess does not clip decoded boxes to the image, the SavedModel's
    # post-processing does: clip here so both are scored (and compared) alike.
    return {"detection_boxes": np.clip(boxes, 0.0, 1.0), "detection_scores": scores,
            "detection_classes": classes + 1.0, "num_detections": num}
