"""Every template renders to a config that parses, builds with ``model_builder`` and trains one
step on CPU (forward, loss, gradients, update) on a tiny input; a zoo-style detection
checkpoint served over HTTP is restored by a model built from the rendered config."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.odapi import checkpoints, pipeline_config
from pipeline.core import compat
from pipeline.core.params import ModelParams, TrainParams
from tests.odapi.template_cases import TEMPLATES, tiny_data, tiny_size

pytestmark = pytest.mark.slow

NUM_CLASSES = 2
#: Variables the OD API builds but never uses: the batch norm after EfficientNet's last
#: block (its classification head); the BiFPN takes earlier block outputs.
UNUSED_VARIABLES = {"top_bn/gamma:0", "top_bn/beta:0"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    compat.apply()  # before any object_detection import
    return tiny_data(tmp_path_factory.mktemp("data"))


def render_and_parse(name: str, data_dir: Path, tmp_path: Path, **model_params) -> dict:
    """Render the template to a file and parse it back as the OD API does."""
    compat.apply()
    from object_detection.utils import config_util

    model = ModelParams(name=name, image_size=tiny_size(pipeline_config.load_template(name)),
                        **model_params)
    path = tmp_path / f"{name}.config"
    pipeline_config.write_config(pipeline_config.render(model, TrainParams(batch_size=1),
                                                        data_dir), path)
    return config_util.get_configs_from_pipeline_file(str(path))


def train_one_step(model, configs, size: int) -> float:
    """Forward, loss, gradients and one optimizer update on a random image with two boxes."""
    import tensorflow as tf
    from object_detection.builders import optimizer_builder

    step = tf.Variable(0, dtype=tf.int64)
    optimizer, _ = optimizer_builder.build(configs["train_config"].optimizer, global_step=step)
    images, shapes = model.preprocess(tf.random.uniform((1, size, size, 3), 0.0, 255.0, seed=1))
    model.provide_groundtruth(
        groundtruth_boxes_list=[tf.constant([[0.1, 0.1, 0.5, 0.6], [0.4, 0.3, 0.9, 0.9]])],
        groundtruth_classes_list=[tf.one_hot([0, 1], NUM_CLASSES)],
        groundtruth_weights_list=[tf.ones(2)])
    with tf.GradientTape() as tape:
        losses = model.loss(model.predict(images, shapes), shapes)
        total = tf.add_n(list(losses.values()) + model.regularization_losses())
    variables = model.trainable_variables
    gradients = tape.gradient(total, variables)
    # Every variable is connected to the loss; most gradients are non-zero (at these tiny sizes
    # the deepest feature maps are 1x1, which makes some batch-norm gamma gradients exactly 0).
    assert not {v.name for g, v in zip(gradients, variables) if g is None} - UNUSED_VARIABLES
    gradients = [tf.zeros_like(v) if g is None else g for g, v in zip(gradients, variables)]
    nonzero = [bool(tf.reduce_any(g != 0)) for g in gradients]
    assert sum(nonzero) >= 0.75 * len(variables)
    before = [v.numpy().copy() for v in variables]  # .numpy() may share the variable's buffer
    optimizer.apply_gradients(zip(gradients, variables))
    changed = [not np.array_equal(b, v.numpy()) for b, v in zip(before, variables)]
    # Untrained deep layers get tiny gradients (1e-6) whose update at the warmup learning rate
    # is below float32 resolution; the weights with the largest gradients must move.
    largest = int(np.argmax([float(tf.reduce_max(tf.abs(g))) for g in gradients]))
    assert changed[largest] and sum(changed) >= 0.2 * len(variables)
    return float(total)


@pytest.mark.parametrize("name", TEMPLATES)
def test_template_builds_and_trains_one_step_on_cpu(name, data_dir, tmp_path):
    from object_detection.builders import model_builder

    configs = render_and_parse(name, data_dir, tmp_path)
    model = model_builder.build(configs["model"], is_training=True)
    assert model.num_classes == NUM_CLASSES
    loss = train_one_step(model, configs, tiny_size(pipeline_config.load_template(name)))
    assert np.isfinite(loss) and loss > 0


def test_a_zoo_detection_checkpoint_is_restored_by_the_rendered_model(data_dir, tmp_path,
                                                                        monkeypatch):
    """Save a trained detector in the zoo's layout, serve it, let configure download and pin
    it, then restore it the way the OD API fine-tunes (type ``detection``)."""
    import tensorflow as tf
    from object_detection.builders import model_builder
    from tests.odapi.test_checkpoints import Server, make_archive

    name = "ssd_mobilenet_v2_fpnlite_320"
    archive_name = "ssd_mobilenet_v2_fpnlite_320x320_coco17_tpu-8"
    configs = render_and_parse(name, data_dir, tmp_path)
    trained = model_builder.build(configs["model"], is_training=True)
    size = tiny_size(pipeline_config.load_template(name))
    train_one_step(trained, configs, size)
    zoo_dir = tmp_path / "served" / "models"
    saved = tf.train.Checkpoint(model=trained)
    saved.save_counter  # created on first access; zoo checkpoints (CheckpointManager) have it
    saved.write(str(tmp_path / archive_name / "checkpoint" / "ckpt-0"))
    zoo_dir.mkdir(parents=True)
    archive = make_archive(zoo_dir / f"{archive_name}.tar.gz", tmp_path / archive_name)
    server = Server(zoo_dir.parent)
    monkeypatch.setenv("OD_PIPELINE_ZOO_URL", server.url)
    monkeypatch.setenv("OD_PIPELINE_CACHE", str(tmp_path / "cache"))
    try:
        configs = render_and_parse(name, data_dir, tmp_path, checkpoint="zoo",
                                   checkpoint_sha256=checkpoints.sha256_of(archive))
    finally:
        server.httpd.shutdown()
    tc = configs["train_config"]
    assert tc.fine_tune_checkpoint_type == "detection"
    assert tc.fine_tune_checkpoint.startswith(str(tmp_path / "cache" / "checkpoints"))

    fresh = model_builder.build(configs["model"], is_training=True)
    train_one_step(fresh, configs, size)  # builds the variables, moves them away
    restore_map = fresh.restore_from_objects(fine_tune_checkpoint_type="detection")
    tf.train.Checkpoint(**restore_map).restore(
        tc.fine_tune_checkpoint).expect_partial().assert_existing_objects_matched()
    restored = fresh._feature_extractor.trainable_variables[0]
    original = trained._feature_extractor.trainable_variables[0]
    assert np.array_equal(restored.numpy(), original.numpy())
