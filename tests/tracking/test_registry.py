"""MLflow model registry: a new version per model; `champion` only for a better map, same split."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from pipeline.tracking import registry
from pipeline.core.params import MlflowParams


class _ConstantDetector(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8)])
    def serve(self, input_tensor):
        return {"detection_boxes": tf.constant([[[0.1, 0.2, 0.5, 0.6]]]),
                "detection_scores": tf.constant([[0.9]]),
                "detection_classes": tf.constant([[1.0]]),
                "num_detections": tf.constant([1.0])}


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("export")
    module = _ConstantDetector()
    tf.saved_model.save(module, str(directory / "saved_model"),
                        signatures={"serving_default": module.serve})
    return directory


@pytest.mark.slow
def test_champion_moves_only_to_a_better_map_on_the_same_split(export_dir, tmp_path,
                                                               monkeypatch):
    import mlflow

    monkeypatch.chdir(tmp_path)  # the default artifact root (./mlruns)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings = MlflowParams(experiment="registry-test",
                            tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")

    def register(map_value, split):
        return registry.register(settings, "detector", None, export_dir, {"map": map_value}, split)

    first = register(0.5, "A")
    assert first["version"] == "1" and first["champion"]
    assert not register(0.4, "A")["champion"]
    assert not register(0.5, "A")["champion"]  # a tie does not beat the champion
    assert register(0.6, "A")["champion"]
    other = register(0.9, "B")
    assert not other["champion"] and "another test split" in other["reason"]
    client = mlflow.MlflowClient()
    champion = client.get_model_version_by_alias("detector", "champion")
    assert str(champion.version) == "4"
    assert champion.tags == {"test_map": "0.6", "test_split_sha256": "A"}
    model = mlflow.pyfunc.load_model("models:/detector@champion")
    outputs = model.predict(np.zeros((2, 32, 32, 3), np.uint8))
    assert outputs["detection_scores"].shape == (2, 1)
    requirements = Path(mlflow.pyfunc.get_model_dependencies("models:/detector/1")).read_text()
    assert f"tensorflow=={tf.__version__}" in requirements.split()


def test_the_logged_code_is_the_pyfunc_of_the_one_runner():
    import pipeline.odapi.serving as serving

    assert registry.serving_code() == serving.__file__
    assert "mlflow.models.set_model(SavedModelDetector())" in Path(serving.__file__).read_text()


def test_serving_requirements_are_the_installed_versions():
    import tf_keras

    wanted = registry.serving_requirements()
    assert f"tensorflow=={tf.__version__}" in wanted
    assert f"tf-keras=={tf_keras.__version__}" in wanted
    assert f"numpy=={np.__version__}" in wanted


def test_split_hash_depends_on_the_test_content_not_on_its_sharding(tmp_path):
    from tests.stages.test_report import OBJECTS, _example, _write_data

    examples = [_example(i, objects) for i, objects in enumerate(OBJECTS)]
    one = registry.split_hash(_write_data(tmp_path / "one", examples, shards=1))
    three = _write_data(tmp_path / "three", examples[::-1], shards=3)
    (three / "train.tfrecord-00000-of-00001").write_bytes(b"not the test split")
    assert registry.split_hash(three) == one  # same images and boxes, other shards and order
    moved = [list(objects) for objects in OBJECTS]
    moved[1] = [([0.2, 0.3, 0.7, 0.81], 2)]  # one box edge moved
    changed = [_example(i, objects) for i, objects in enumerate(moved)]
    assert registry.split_hash(_write_data(tmp_path / "changed", changed, shards=1)) != one
    relabelled = [list(objects) for objects in OBJECTS]
    relabelled[1] = [([0.2, 0.3, 0.7, 0.8], 1)]
    changed = [_example(i, objects) for i, objects in enumerate(relabelled)]
    assert registry.split_hash(_write_data(tmp_path / "relabelled", changed, shards=1)) != one


def test_the_shipped_modules_are_everything_the_pyfunc_loads_from_the_project(tmp_path):
    from tests.test_architecture import closure

    assert set(registry.SERVING_MODULES) == closure("pipeline.odapi.serving", with_packages=True)
    shipped = registry.copy_serving_modules(tmp_path)
    assert shipped == tmp_path / "pipeline"
    assert (shipped / "odapi" / "detector.py").is_file() and (shipped / "__init__.py").is_file()
    assert not (shipped / "stages").exists()  # only what serving needs


def test_the_signature_names_every_output_of_the_pyfunc():
    from pipeline.odapi.serving import as_arrays

    signature = registry.serving_signature()
    assert set(signature.outputs.input_names()) == set(as_arrays([]))
    assert signature.inputs.inputs[0].shape == (-1, -1, -1, 3)
