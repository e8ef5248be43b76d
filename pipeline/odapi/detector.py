"""The one runner of exported detectors: load an OD API SavedModel, feed it, read its detections.

Every consumer (export verification, the report, predict, the model registry's pyfunc and the
benchmarks) runs SavedModels through :class:`Detector`, and TFLite models
(:class:`pipeline.odapi.tflite.TfliteDetector`) return the same :class:`Detections`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow as tf

from pipeline.core import layout
from pipeline.core.errors import PipelineError

log = logging.getLogger(__name__)

DETECTION_KEYS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")


def decode_example_image(example: bytes) -> np.ndarray:
    """The uint8 [H, W, 3] image of a serialized tf.Example, decoded as the exporter does."""
    return _decode(encoded_image(example)).numpy()


def encoded_image(example: bytes):
    """The ``image/encoded`` bytes of a serialized tf.Example, as a scalar string tensor."""
    features = tf.io.parse_single_example(
        example, {"image/encoded": tf.io.FixedLenFeature([], tf.string)})
    return features["image/encoded"]


def _decode(encoded) -> tf.Tensor:
    return tf.io.decode_image(encoded, channels=3, expand_animations=False)


# --- the detections -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Detections:
    """One image's detections, best first: only the valid ones (the model's padding trimmed)."""

    boxes: np.ndarray  # [N, 4] normalised ymin, xmin, ymax, xmax
    scores: np.ndarray  # [N]
    classes: np.ndarray  # [N] int64, label-map ids (from 1)

    @classmethod
    def from_outputs(cls, outputs: Mapping[str, Any], class_offset: int = 0) -> Detections:
        """From the four detection arrays of a batch of one image, padded to ``max_detections``.

        ``class_offset`` is added to the class ids: 0 for an exported model (the exporter
        already adds 1), 1 for a detection model's own ``postprocess`` (ids from 0).
        """
        count = int(np.asarray(outputs["num_detections"]).reshape(-1)[0])
        boxes = np.asarray(outputs["detection_boxes"]).reshape(-1, 4)[:count]
        scores = np.asarray(outputs["detection_scores"]).reshape(-1)[:count]
        classes = np.rint(np.asarray(outputs["detection_classes"]).reshape(-1)[:count])
        order = np.argsort(-scores, kind="stable")  # ties keep the model's order
        return cls(boxes[order], scores[order], (classes[order] + class_offset).astype(np.int64))

    def __len__(self) -> int:
        return len(self.scores)


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
        self.takes_batches = bool(spec.shape.rank) and spec.shape[0] is None
        if spec.dtype == tf.uint8:
            self.input_type = "image_tensor"
        elif _parses_examples(signature):
            self.input_type = "tf_example"
        else:
            self.input_type = "encoded_image_string_tensor"

    @classmethod
    def load(cls, model_dir: str | Path) -> Detector:
        """Load ``model_dir/saved_model`` (an export directory); PipelineError if unusable."""
        return cls.load_saved_model(Path(model_dir) / layout.SAVED_MODEL_DIR)

    @classmethod
    def load_saved_model(cls, path: str | Path) -> Detector:
        """Load the SavedModel directory ``path``; PipelineError if it is missing or unusable."""
        path = Path(path)
        if not (path / layout.SAVED_MODEL_GRAPH).is_file():
            raise PipelineError(f"no SavedModel at {path} ({layout.SAVED_MODEL_GRAPH} missing); "
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

    def example_input(self, example: bytes, encoded: bytes | None = None) -> tf.Tensor:
        """The signature's input for one serialized tf.Example (built outside a timed call).

        ``encoded``: the example's ``image/encoded`` bytes when the caller has parsed them.
        """
        if self.input_type == "tf_example":
            return tf.constant([example])
        if encoded is None:
            encoded = encoded_image(example)
        if self.input_type == "image_tensor":
            return _decode(encoded)[tf.newaxis]
        return tf.reshape(tf.convert_to_tensor(encoded), [1])

    def image_input(self, rgb: np.ndarray) -> tf.Tensor:
        """The signature's input for one uint8 RGB ``[H, W, 3]`` image (PNG-encoded, so
        losslessly, for models taking encoded images or tf.Examples)."""
        if self.input_type == "image_tensor":
            return tf.constant(np.asarray(rgb, np.uint8)[np.newaxis])
        encoded = tf.io.encode_png(np.asarray(rgb, np.uint8)).numpy()
        if self.input_type == "encoded_image_string_tensor":
            return tf.constant([encoded])
        feature = tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded]))
        example = tf.train.Example(features=tf.train.Features(feature={"image/encoded": feature}))
        return tf.constant([example.SerializeToString()])

    def __call__(self, inputs: tf.Tensor) -> Detections:
        """Run the model on a batch of one; its valid detections, best first."""
        return Detections.from_outputs(self._run(inputs))

    def detect_images(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Each uint8 RGB image's detections: one call for the whole batch when the signature
        takes batches (encoded images, tf.Examples) and the images share a shape (the exporter
        stacks them), else one call per image (``image_tensor`` signatures take batch 1)."""
        if not self.takes_batches or len({np.shape(image) for image in images}) != 1:
            return [self(self.image_input(image)) for image in images]
        outputs = self._run(tf.concat([self.image_input(image) for image in images], axis=0))
        return [Detections.from_outputs({key: value[i:i + 1] for key, value in outputs.items()})
                for i in range(len(images))]

    def _run(self, inputs: tf.Tensor) -> dict[str, np.ndarray]:
        outputs = self._signature(**{self._arg: inputs})
        missing = [key for key in DETECTION_KEYS if key not in outputs]
        if missing:
            raise PipelineError(f"exported model returned no {missing}; got {sorted(outputs)}")
        return {key: outputs[key].numpy() for key in DETECTION_KEYS}


def _parses_examples(signature: Any) -> bool:
    graph_def = signature.graph.as_graph_def()
    ops = {node.op for node in graph_def.node}
    ops.update(node.op for f in graph_def.library.function for node in f.node_def)
    return any(op.startswith("ParseExample") or op.startswith("ParseSingleExample") for op in ops)
