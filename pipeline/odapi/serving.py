"""The MLflow pyfunc of a registered model, logged as code by :mod:`pipeline.tracking.registry`.

MLflow runs this file when the model is logged and when it is loaded
(``mlflow.pyfunc.load_model``); it runs the exported SavedModel through the project's one
runner, :class:`pipeline.odapi.detector.Detector` (any exporter input type, batch 1 per image),
so ``pipeline`` must be importable where the model is served.
"""
from __future__ import annotations

import mlflow
from mlflow.pyfunc import PythonModel

from pipeline.core import layout

#: The artifact (the export's ``saved_model/`` directory) the pyfunc is logged with.
ARTIFACT = layout.SAVED_MODEL_DIR


class SavedModelDetector(PythonModel):
    """pyfunc: uint8 images ``[N, H, W, 3]`` in, detection arrays out (see :func:`as_arrays`)."""

    def load_context(self, context) -> None:
        from pipeline.odapi.detector import Detector

        self._detector = Detector.load_saved_model(context.artifacts[ARTIFACT])

    def predict(self, context, model_input, params=None):  # no hints: MLflow would
        # treat them as an input schema to validate against
        import numpy as np

        return as_arrays([self._detector(self._detector.image_input(np.asarray(image, np.uint8)))
                          for image in model_input])


def as_arrays(detections: list) -> dict:
    """Per-image :class:`~pipeline.odapi.detector.Detections` as the exporter's four arrays:
    ``detection_boxes`` ``[N, M, 4]``, ``detection_scores`` and ``detection_classes``
    (label-map ids, float32 like the exporter's) ``[N, M]``, ``num_detections`` ``[N]``; each
    image's detections best first, zero-padded to the longest list ``M``."""
    import numpy as np

    longest = max((len(d) for d in detections), default=0)
    boxes = np.zeros((len(detections), longest, 4), np.float32)
    scores = np.zeros((len(detections), longest), np.float32)
    classes = np.zeros((len(detections), longest), np.float32)
    for i, image in enumerate(detections):
        count = len(image)
        boxes[i, :count], scores[i, :count], classes[i, :count] = (image.boxes, image.scores,
                                                                   image.classes)
    return {"detection_boxes": boxes, "detection_scores": scores, "detection_classes": classes,
            "num_detections": np.array([len(d) for d in detections], np.float32)}


mlflow.models.set_model(SavedModelDetector())
