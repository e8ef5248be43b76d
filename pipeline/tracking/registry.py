"""MLflow model registry: each reported model becomes a new version; ``champion`` follows the best.

The export directory is logged as an MLflow pyfunc (the code of :mod:`pipeline.odapi.serving`,
running ``saved_model/`` through :class:`pipeline.odapi.detector.Detector`) in the report's run
and registered under ``report.registered_model``, with the project modules it imports
(:data:`SERVING_MODULES`, as MLflow ``code_paths``: it loads and serves without the repository),
its class names, a signature and an input example. The version is tagged with its test ``map`` and
the hash of the test split's content (:func:`split_hash`). The report journals the
registration (:func:`record_registration`); it happens when the journal is sent, or later
through ``sync-mlflow`` if the server was down.
The alias ``champion`` moves to the new version only when there is no champion yet, or the
champion was scored on the same test split (same hash) and the new ``map`` is strictly higher;
scores on different test splits are not comparable, so the alias then stays where it is.
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import shutil
import tempfile
import warnings
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.core import layout
from pipeline.tracking import client as tracking
from pipeline.core.params import MlflowParams

if TYPE_CHECKING:  # the journal imports this module when it replays a registration
    from pipeline.tracking.journal import RunJournal

log = logging.getLogger(__name__)

#: What the logged pyfunc needs to load and run the SavedModel, pinned to the installed versions
#: (MLflow adds itself): TensorFlow runs the graph, tf-keras is the tf.keras the OD API built it
#: with (TF_USE_LEGACY_KERAS), NumPy carries the arrays in and out.
SERVING_PACKAGES = ("tensorflow", "tf-keras", "numpy")

#: The project modules the pyfunc loads (:mod:`pipeline.odapi.serving`'s imports and the packages
#: Python runs first), shipped with the model so that it needs no repository; a test checks the
#: list against the static import graph.
SERVING_MODULES = ("pipeline", "pipeline.core", "pipeline.core.compat", "pipeline.core.errors",
                   "pipeline.core.layout", "pipeline.core.logs", "pipeline.odapi",
                   "pipeline.odapi.detector", "pipeline.odapi.serving")
#: The input example logged with the model: one small black RGB image (the signature accepts
#: any size); kept tiny because MLflow stores it as JSON and runs the model on it when logging.
EXAMPLE_SHAPE = (1, 32, 32, 3)

CHAMPION = "champion"
MAP_TAG = "test_map"
SPLIT_TAG = "test_split_sha256"


def serving_code() -> str:
    """The file logged as the model's code: :mod:`pipeline.odapi.serving`, the pyfunc that runs
    the SavedModel through the project's one detector runner."""
    # Found, not imported: the journal (which every stage records through) imports this module,
    # and the runner belongs to the export and report side, not to every stage's dependencies.
    return importlib.util.find_spec("pipeline.odapi.serving").origin


def serving_requirements() -> list[str]:
    """``name==version`` of each of :data:`SERVING_PACKAGES` as installed here."""
    return [f"{name}=={metadata.version(name)}" for name in SERVING_PACKAGES]


def copy_serving_modules(destination: Path) -> Path:
    """Copy :data:`SERVING_MODULES` into ``destination/pipeline`` (the package layout kept, so
    MLflow's ``code/`` folder on ``sys.path`` makes them importable); returns that folder."""
    root = Path(importlib.util.find_spec("pipeline").origin).parent
    for name in SERVING_MODULES:
        source = Path(importlib.util.find_spec(name).origin)
        target = Path(destination) / source.relative_to(root.parent)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    return Path(destination) / root.name


def serving_signature() -> Any:
    """The pyfunc's signature: uint8 images ``[N, H, W, 3]`` in, the arrays of
    :func:`pipeline.odapi.serving.as_arrays` out."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    float32 = np.dtype(np.float32)
    outputs = [TensorSpec(float32, (-1, -1, 4), "detection_boxes"),
               TensorSpec(float32, (-1, -1), "detection_scores"),
               TensorSpec(float32, (-1, -1), "detection_classes"),
               TensorSpec(np.dtype(str), (-1, -1), "detection_class_names"),
               TensorSpec(float32, (-1,), "num_detections")]
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
                          outputs=Schema(outputs))


def split_hash(data_dir: str | Path) -> str:
    """SHA-256 identifying the test split by its content, whatever its sharding.

    Each test record is hashed over its decoded image (shape and pixels) and its annotations
    (boxes and class labels, object order ignored); the split's hash covers the sorted record
    hashes, so the same images and boxes written into other shards, in another order or
    re-encoded losslessly give the same hash, and any changed box or pixel a different one.
    """
    import tensorflow as tf

    files = layout.record_files(data_dir, "test")
    digests = sorted(_record_digest(r.numpy()) for r in tf.data.TFRecordDataset(files))
    digest = hashlib.sha256()
    for record in digests:
        digest.update(record)
    return digest.hexdigest()


def _record_digest(serialized: bytes) -> bytes:
    import numpy as np
    import tensorflow as tf

    example = tf.train.Example.FromString(serialized).features.feature
    image = tf.io.decode_image(example["image/encoded"].bytes_list.value[0], channels=3,
                               expand_animations=False).numpy()

    def floats(key: str) -> list[float]:
        return list(example[key].float_list.value) if key in example else []

    boxes = zip(*(floats(f"image/object/bbox/{k}") for k in ("ymin", "xmin", "ymax", "xmax")))
    labels = list(example["image/object/class/label"].int64_list.value
                  if "image/object/class/label" in example else [])
    objects = sorted(f"{label}:{','.join(f'{v:.6f}' for v in box)}"
                     for label, box in zip(labels, boxes))
    digest = hashlib.sha256(str(image.shape).encode())
    digest.update(np.ascontiguousarray(image).tobytes())
    digest.update("\n".join(objects).encode())
    return digest.digest()


def record_registration(journal: RunJournal, name: str, model_dir: Path,
                        metrics: dict, test_split: str, classes: dict[int, str]) -> None:
    """Journal the registration of ``model_dir`` as a new version of ``name`` (``classes``:
    the label map, so that the served model names what it detects).

    It is done when the journal is sent (:func:`replay`), so a tracking server that is down
    delays it to ``sync-mlflow`` instead of losing it.
    """
    graph = Path(model_dir).resolve() / layout.SAVED_MODEL_DIR / layout.SAVED_MODEL_GRAPH
    journal.register({"name": name, "model_dir": str(Path(model_dir).resolve()),
                      "map": metrics["map"], "test_split": test_split,
                      "classes": {str(k): v for k, v in classes.items()},
                      "saved_model_sha256": tracking.file_sha256(graph)})


def replay(settings: MlflowParams, run_id: str, record: dict) -> dict | None:
    """Register a journaled model version (from :func:`record_registration`) in ``run_id``.

    Skipped with a warning when the exported model changed since it was reported.
    """
    model_dir = Path(record["model_dir"])
    graph = model_dir / layout.SAVED_MODEL_DIR / layout.SAVED_MODEL_GRAPH
    if not graph.is_file() or tracking.file_sha256(graph) != record["saved_model_sha256"]:
        log.warning("not registered as %s: the model reported in run %s is no longer at %s "
                    "(exported again since?)", record["name"], run_id, model_dir)
        return None
    # journals written before class names were recorded give ids as names
    return register(settings, record["name"], run_id, model_dir, {"map": record["map"]},
                    record["test_split"], record.get("classes") or {})


def register(settings: MlflowParams, name: str, run_id: str | None, model_dir: Path,
             metrics: dict, test_split: str, classes: dict | None = None) -> dict:
    """Log and register the model as a new version; move ``champion`` if it wins.

    Returns ``{"version", "champion" (bool), "reason"}``.
    """
    import numpy as np

    with (tempfile.TemporaryDirectory() as code,
          tracking.start_run(settings, "register", run_id=run_id) as mlflow,
          warnings.catch_warnings()):
        # The model has an explicit signature: MLflow's advice to add type hints to `predict`
        # (to infer one) does not apply, and it is printed on every report.
        warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method")
        info = mlflow.pyfunc.log_model(
            name="model", python_model=serving_code(),
            artifacts={layout.SAVED_MODEL_DIR: str(Path(model_dir) / layout.SAVED_MODEL_DIR)},
            code_paths=[str(copy_serving_modules(Path(code)))],
            model_config={"classes": {str(k): v for k, v in (classes or {}).items()}},
            signature=serving_signature(), input_example=np.zeros(EXAMPLE_SHAPE, np.uint8),
            pip_requirements=serving_requirements(), registered_model_name=name)
    client = mlflow.MlflowClient()
    version = str(info.registered_model_version)
    client.set_model_version_tag(name, version, MAP_TAG, str(metrics["map"]))
    client.set_model_version_tag(name, version, SPLIT_TAG, test_split)
    promote, reason = _should_promote(client, name, metrics["map"], test_split)
    if promote:
        client.set_registered_model_alias(name, CHAMPION, version)
    log.info("registered %s version %s (map %s); champion: %s", name, version, metrics["map"],
             reason)
    return {"version": version, "champion": promote, "reason": reason}


def _should_promote(client: Any, name: str, new_map: float | None,
                    test_split: str) -> tuple[bool, str]:
    from mlflow.exceptions import MlflowException

    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return True, "first version with a test map: made champion"
    if current.tags.get(SPLIT_TAG) != test_split:
        return False, (f"champion (version {current.version}) was scored on another test split; "
                       "alias not moved")
    old = current.tags.get(MAP_TAG)
    old_map = None if old in (None, "None") else float(old)
    if new_map is not None and (old_map is None or new_map > old_map):
        return True, f"map {new_map:.4f} beats version {current.version}'s {old_map}"
    return False, f"map {new_map} does not beat version {current.version}'s {old_map}"
