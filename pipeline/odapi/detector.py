"""The one door to an exported OD API SavedModel: load it, feed it, read its detections.

Used by export verification, the report, predict, the model registry and the benchmarks.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from pipeline.core import layout
from pipeline.core.errors import PipelineError

log = logging.getLogger(__name__)

DETECTION_KEYS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")


def decode_example_image(example: bytes) -> np.ndarray:
    """The uint8 [H, W, 3] image of a serialized tf.Example, decoded as the exporter does."""
    encoded = encoded_image(example)
    return tf.io.decode_image(encoded, channels=3, expand_animations=False).numpy()


def encoded_image(example: bytes):
    """The ``image/encoded`` bytes of a serialized tf.Example, as a scalar string tensor."""
    features = tf.io.parse_single_example(
        example, {"image/encoded": tf.io.FixedLenFeature([], tf.string)})
    return features["image/encoded"]



# --- the SavedModel ------------------------------------------------------------------------------------


class Detector:
    """An exported OD API SavedModel's ``serving_default`` signature, called with batch 1.

    Works with all three exporter input types: ``image_tensor`` (uint8 [1, H, W, 3]),
    ``encoded_image_string_tensor`` (the JPEG bytes) and ``tf_example`` (the serialized
    tf.Example); the latter two are told apart by whether the graph parses tf.Examples.
    """

    def __init__(self, signature: Any, owner: Any = None):
        self._signature = signature
        self._owner = owner  # the loaded SavedModel: keeps the signature's variables alive
        (self._arg, spec), = signature.structured_input_signature[1].items()
        if spec.dtype == tf.uint8:
            self.input_type = "image_tensor"
        elif _parses_examples(signature):
            self.input_type = "tf_example"
        else:
            self.input_type = "encoded_image_string_tensor"

    @classmethod
    def load(cls, model_dir: str | Path) -> Detector:
        """Load ``model_dir/saved_model``; PipelineError if it is missing or unusable."""
        path = Path(model_dir) / layout.SAVED_MODEL_DIR
        if not (path / "saved_model.pb").is_file():
            raise PipelineError(f"no SavedModel at {path} (saved_model.pb missing); "
                                "run the export stage first")
        try:
            model = tf.saved_model.load(str(path))
        except (OSError, ValueError, tf.errors.OpError) as err:
            raise PipelineError(f"cannot load the SavedModel at {path}: {err}") from None
        if "serving_default" not in model.signatures:
            raise PipelineError(f"SavedModel {path} has no 'serving_default' signature")
        detector = cls(model.signatures["serving_default"], owner=model)
        log.info("loaded %s (input: %s)", path, detector.input_type)
        return detector

    def model_input(self, sample: Any) -> tf.Tensor:
        """The signature's input for one test sample (decoded outside the timed call)."""
        if self.input_type == "image_tensor":
            image = tf.io.decode_image(sample.features["image/encoded"], channels=3,
                                       expand_animations=False)
            return image[tf.newaxis]
        if self.input_type == "tf_example":
            return tf.constant([sample.serialized])
        return tf.constant([sample.features["image/encoded"]])

    def __call__(self, inputs: tf.Tensor) -> dict[str, np.ndarray]:
        """Run the model; outputs as numpy arrays with the batch dimension removed."""
        outputs = self._signature(**{self._arg: inputs})
        return {key: outputs[key].numpy()[0] for key in DETECTION_KEYS}


def _parses_examples(signature: Any) -> bool:
    graph_def = signature.graph.as_graph_def()
    ops = {node.op for node in graph_def.node}
    ops.update(node.op for f in graph_def.library.function for node in f.node_def)
    return any(op.startswith("ParseExample") or op.startswith("ParseSingleExample") for op in ops)
