"""Stage ``export``: the exported SavedModel is verified against the checkpoint; TFLite for SSD."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.odapi import detector
from pipeline.odapi import export
from pipeline.odapi import tflite
from pipeline.core.errors import PipelineError
from tests.trained_model import trained_project

EFFICIENTDET_CONFIG = """
model {
  ssd {
    num_classes: 2
    image_resizer { keep_aspect_ratio_resizer { min_dimension: 512 max_dimension: 512
                                                pad_to_max_dimension: true } }
    feature_extractor { type: "ssd_efficientnet-b0_bifpn_keras"
                        bifpn { min_level: 3 max_level: 7 num_iterations: 3 num_filters: 64 } }
  }
}
"""
FASTER_RCNN_CONFIG = "model { faster_rcnn { num_classes: 2 } }"


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return trained_project(tmp_path_factory)


def _perturbed_checkpoint(project: Path, directory: Path) -> Path:
    """The trained checkpoint with its box predictor's weights scaled by 1.5."""
    import tensorflow as tf

    from pipeline.core import compat

    compat.apply()
    from object_detection.builders import model_builder
    from object_detection.utils import config_util

    configs = config_util.get_configs_from_pipeline_file(str(project / "models/pipeline.config"))
    model = model_builder.build(configs["model"], is_training=False)
    checkpoint = tf.train.Checkpoint(model=model)
    checkpoint.restore(tf.train.latest_checkpoint(str(project / "models/train"))).expect_partial()
    image = tf.zeros([1, 128, 128, 3])
    model.predict(*model.preprocess(image))  # builds the variables
    predictor = [v for v in model.trainable_variables if "BoxPredictor" in v.name]
    assert predictor
    for variable in predictor:
        variable.assign(variable * 1.5)
    tf.train.CheckpointManager(checkpoint, str(directory), max_to_keep=1).save()
    return directory


@pytest.mark.slow
def test_export_is_verified_against_its_checkpoint(project):
    summary = json.loads((project / "models/exported/verification.json").read_text())
    assert summary["verified_images"] == 4
    assert summary["compared_detections"] > 0
    assert summary["max_score_difference"] <= summary["tolerance"] == 1e-3
    assert not (project / "models/exported.partial").exists()


@pytest.mark.slow
def test_verification_fails_on_a_mismatched_checkpoint(project, tmp_path):
    other = _perturbed_checkpoint(project, tmp_path / "other")
    examples = export.test_examples(project / "data/tfrecords", 2)
    exported = project / "models/exported"
    with pytest.raises(PipelineError, match="disagrees with checkpoint"):
        export.verify_export(exported, project / "models/pipeline.config", other, examples, 1e-3)
    # The same call against the checkpoint it was exported from passes.
    summary = export.verify_export(exported, project / "models/pipeline.config",
                                   project / "models/train", examples, 1e-3)
    assert summary["max_box_difference"] <= 1e-3


@pytest.mark.slow
def test_failed_verification_leaves_no_export(project, tmp_path, monkeypatch):
    from pipeline import cli

    other = _perturbed_checkpoint(project, tmp_path / "other")
    # Export the real checkpoint but verify against the perturbed one.
    monkeypatch.setattr(export, "verify_export", _verify_against(other))
    output = tmp_path / "exported"
    code = cli.main(["export", "--params", str(project / "params.yaml"),
                     "--config", str(project / "models/pipeline.config"),
                     "--model-dir", str(project / "models/train"),
                     "--data", str(project / "data/tfrecords"), "--output", str(output)])
    assert code == 1
    assert not output.exists() and not output.with_name("exported.partial").exists()


def _verify_against(checkpoint_dir: Path):
    real = export.verify_export

    def verify(export_dir, config, _checkpoint_dir, examples, tolerance):
        return real(export_dir, config, checkpoint_dir, examples, tolerance)

    return verify


@pytest.mark.slow
def test_tflite_models_match_the_saved_model(project):
    tflite_dir = project / "models/exported/tflite"
    detectors = tflite.TfliteDetector.load_all(tflite_dir)
    assert set(detectors) == {"float32", "int8"}
    example = export.test_examples(project / "data/tfrecords", 1)[0]
    image = detector.decode_example_image(example)
    reference = export.saved_model_detections(project / "models/exported", [example])[0]
    outputs = detectors["float32"](image)  # the same Detections type as the SavedModel's
    # Same weights, so the best detection is the same. Further down the lists may differ:
    # TFLite's NMS keeps one class per box, the SavedModel's several, and a barely trained
    # model has many near-tied boxes.
    score_diff, box_diff = export.closest_match(outputs, 0, reference)
    assert score_diff <= 1e-3 and box_diff <= 1e-3
    assert outputs.scores[0] == pytest.approx(reference.scores[0], abs=1e-3)
    int8 = detectors["int8"](image)
    assert int8.scores.shape == outputs.scores.shape


@pytest.mark.parametrize("text, name", [(EFFICIENTDET_CONFIG, "EfficientDet"),
                                        (FASTER_RCNN_CONFIG, "faster_rcnn")])
def test_tflite_is_refused_clearly_for_unsupported_models(tmp_path, text, name):
    config = tmp_path / "pipeline.config"
    config.write_text(text)
    with pytest.raises(tflite.TfliteUnsupported, match=f"not supported for {name}"):
        tflite.check_supported(tflite.read_model_config(config))


def test_tflite_export_all_records_unsupported_without_failing(tmp_path):
    from pipeline.core.params import ExportParams

    config = tmp_path / "pipeline.config"
    config.write_text(EFFICIENTDET_CONFIG)
    summary = tflite.export_all(config, tmp_path, tmp_path, tmp_path / "tflite", ExportParams())
    assert "not supported for EfficientDet" in summary["unsupported"]
    assert not (tmp_path / "tflite").exists()


def test_export_params_reject_unknown_tflite_precision():
    from pipeline.core.params import ParamsError, params_from_dict

    with pytest.raises(ParamsError, match="export.tflite"):
        params_from_dict({"export": {"tflite": ["float64"]}})


def test_tflite_outputs_are_named_and_boxes_clipped_like_the_saved_model():
    # TFLite_Detection_PostProcess leaves decoded boxes past the image edge (seen: ymax 1.125
    # where the SavedModel gives 1.0); the report scores both, so both must be clipped alike.
    raw = {"output_0": np.array([2.0]), "output_1": np.array([[0.9, 0.4]]),
           "output_2": np.array([[0.0, 2.0]]),
           "output_3": np.array([[[-0.1, 0.2, 0.5, 1.125], [0.1, 0.2, 0.3, 0.4]]])}
    named = tflite.outputs_by_meaning(raw)
    np.testing.assert_allclose(named["detection_boxes"],
                               [[[0.0, 0.2, 0.5, 1.0], [0.1, 0.2, 0.3, 0.4]]])
    np.testing.assert_array_equal(named["detection_classes"], [[1.0, 3.0]])
    np.testing.assert_array_equal(named["detection_scores"], [[0.9, 0.4]])
    assert named["num_detections"][0] == 2.0


@pytest.mark.parametrize("target", ["model_dir", "foreign"])
def test_output_holding_an_input_or_foreign_files_is_refused(tmp_path, monkeypatch, capsys,
                                                             target):
    """Before any work: nothing exported, nothing deleted, one line."""
    from pipeline import cli

    model_dir = tmp_path / "train"
    model_dir.mkdir()
    (model_dir / "checkpoint").write_text('model_checkpoint_path: "ckpt-1"\n')
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("not ours")
    params = tmp_path / "params.yaml"
    params.write_text("{}\n")

    def never(*args):
        raise AssertionError("the export ran")

    monkeypatch.setattr(export, "export_and_verify", never)
    output = {"model_dir": model_dir, "foreign": foreign}[target]
    code = cli.main(["export", "--params", str(params), "--config", str(tmp_path / "p.config"),
                     "--model-dir", str(model_dir), "--data", str(tmp_path / "data"),
                     "--output", str(output)])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: export: output") and len(err.strip().splitlines()) == 1
    assert (model_dir / "checkpoint").is_file() and (foreign / "keep.txt").is_file()
