"""The MLflow pyfunc of a registered model, logged as code by :mod:`pipeline.tracking.registry`.

MLflow runs this file when the model is logged and when it is loaded
(``mlflow.pyfunc.load_model``, ``mlflow models serve``); it runs the exported SavedModel through
the project's one runner, :class:`pipeline.odapi.detector.Detector`, on the whole batch at once
when the model's signature takes batches. The model carries what it imports from ``pipeline``
(MLflow ``code_paths``, see :data:`pipeline.tracking.registry.SERVING_MODULES`), so it loads and
serves without the repository; its class names come with it (the ``classes`` model config).
"""
from __future__ import annotations

import mlflow
from mlflow.pyfunc import PythonModel

from pipeline.core import layout

#: The artifact (the export's ``saved_model/`` directory) the pyfunc is logged with.
ARTIFACT = layout.SAVED_MODEL_DIR
#: The model config key holding the label map: ``{"1": "raccoon", ...}``.
CLASSES = "classes"


class SavedModelDetector(PythonModel):
    """pyfunc: uint8 images ``[N, H, W, 3]`` in, detection arrays out (see :func:`as_arrays`)."""

    def load_context(self, context) -> None:
        from pipeline.odapi.detector import Detector

        self._detector = Detector.load_saved_model(context.artifacts[ARTIFACT])
        classes = (context.model_config or {}).get(CLASSES) or {}
        self._names = {int(class_id): name for class_id, name in classes.items()}

    def predict(self, context, model_input, params=None):  # no hints: MLflow would
        # treat them as an input schema to validate against
        import numpy as np

        images = [np.asarray(image, np.uint8) for image in model_input]
        return as_arrays(self._detector.detect_images(images), self._names)


def as_arrays(detections: list, names: dict[int, str] | None = None) -> dict:
    """Per-image :class:`~pipeline.odapi.detector.Detections` as the exporter's four arrays plus
    the class names: ``detection_boxes`` ``[N, M, 4]``, ``detection_scores``,
    ``detection_classes`` (label-map ids, float32 like the exporter's) and
    ``detection_class_names`` (the id itself when the label map does not name it) ``[N, M]``,
    ``num_detections`` ``[N]``; each image's detections best first, padded (zeros, empty names)
    to the longest list ``M``."""
    import numpy as np

    names = names or {}
    longest = max((len(d) for d in detections), default=0)
    boxes = np.zeros((len(detections), longest, 4), np.float32)
    scores = np.zeros((len(detections), longest), np.float32)
    classes = np.zeros((len(detections), longest), np.float32)
    class_names = np.full((len(detections), longest), "", dtype=object)
    for i, image in enumerate(detections):
        count = len(image)
        boxes[i, :count], scores[i, :count], classes[i, :count] = (image.boxes, image.scores,
                                                                   image.classes)
        class_names[i, :count] = [names.get(int(c), str(int(c))) for c in image.classes]
    return {"detection_boxes": boxes, "detection_scores": scores, "detection_classes": classes,
            "detection_class_names": class_names.astype(str),
            "num_detections": np.array([len(d) for d in detections], np.float32)}


mlflow.models.set_model(SavedModelDetector())
