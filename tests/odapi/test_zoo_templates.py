"""Every template with a zoo archive, end to end against a local HTTP server: the test builds an
archive laid out as the real zoo's (``<name>/checkpoint/ckpt-0.*``, ``<name>/pipeline.config``,
``<name>/saved_model/``) from the template's own architecture, then ``configure`` downloads and
pins it (lock written), a second run uses the cache, a changed archive is refused, and the
rendered config's checkpoint restores into a freshly built model as the OD API fine-tunes.

The templates are read from configs/models.yaml (tests/odapi/template_cases.py): a new template
is tested without editing this.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.odapi import checkpoints, pipeline_config
from pipeline.core import compat
from pipeline.odapi import templates as zoo
from pipeline.core.errors import PipelineError
from pipeline.core.params import ModelParams, TrainParams
from tests.odapi.template_cases import ZOO_TEMPLATES, tiny_data, tiny_size

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    compat.apply()
    return tiny_data(tmp_path_factory.mktemp("data"))


def build_model(config):
    """The template's detector, with its variables created by one forward pass."""
    import tensorflow as tf
    from object_detection.builders import model_builder

    model = model_builder.build(config.model, is_training=True)
    size = pipeline_config.image_size(config)
    images, shapes = model.preprocess(tf.random.uniform((1, size, size, 3), 0.0, 255.0, seed=1))
    model.provide_groundtruth(  # Faster R-CNN samples its proposals against them in training
        groundtruth_boxes_list=[tf.constant([[0.1, 0.1, 0.5, 0.6]])],
        groundtruth_classes_list=[tf.one_hot([0], model.num_classes)])
    model.predict(images, shapes)
    return model


def zoo_folder(config, name: str, where: Path):
    """``<where>/<name>/`` as the zoo lays it out, from a model built from ``config``."""
    import tensorflow as tf

    model = build_model(config)
    root = where / name
    saved = tf.train.Checkpoint(model=model)
    saved.save_counter  # created on first access, as in the zoo's CheckpointManager checkpoints
    saved.write(str(root / "checkpoint" / "ckpt-0"))
    (root / "pipeline.config").write_text(pipeline_config.serialize(config))
    module = tf.Module()
    module.v = tf.Variable(1.0)
    tf.saved_model.save(module, str(root / "saved_model"))
    return model, root


def render(name: str, data_dir: Path, size: int, **model_params):
    model = ModelParams(name=name, image_size=size, **model_params)
    return pipeline_config.render(model, TrainParams(batch_size=1), data_dir)


@pytest.mark.parametrize("name", ZOO_TEMPLATES)
def test_zoo_checkpoint_of_each_template_is_pinned_cached_refused_when_changed_and_restored(
        name, data_dir, tmp_path, monkeypatch):
    from tests.odapi.test_checkpoints import Server, leftovers, make_archive

    spec = zoo.spec_for(name)
    size = tiny_size(pipeline_config.load_template(name))
    scratch = render(name, data_dir, size)
    original, folder = zoo_folder(scratch, spec.zoo_archive, tmp_path / "built")
    served = tmp_path / "served" / "models"
    served.mkdir(parents=True)
    archive = make_archive(served / f"{spec.zoo_archive}.tar.gz", folder)
    server = Server(served.parent)
    cache, lock = tmp_path / "cache", tmp_path / "checkpoints.lock"
    monkeypatch.setenv("OD_PIPELINE_CACHE", str(cache))
    monkeypatch.setattr(checkpoints, "LOCK_FILE", lock)
    try:
        # First run: downloaded from model.checkpoint_url, pinned in the lock, extracted.
        config = render(name, data_dir, size, checkpoint="zoo", checkpoint_url=server.url)
        entry = checkpoints.read_lock(lock)[spec.zoo_archive]
        assert entry.sha256 == checkpoints.sha256_of(archive) and server.requests == 1
        assert entry.url == f"{server.url}/{spec.zoo_archive}.tar.gz"
        assert_restores(config, original, cache / "checkpoints" / spec.zoo_archive)
        # Second run: the cache, no request.
        assert render(name, data_dir, size, checkpoint="zoo", checkpoint_url=server.url) == config
        assert server.requests == 1
        # The served archive changes (a file added): refused against the lock, nothing extracted.
        (folder / "README").write_text("changed\n")
        make_archive(archive, folder)
        shutil.rmtree(cache)
        with pytest.raises(PipelineError, match=f"checksum mismatch for {spec.zoo_archive}.tar.gz"
                                                f": .*checkpoints.lock expects sha256 {entry.sha256}"):
            render(name, data_dir, size, checkpoint="zoo", checkpoint_url=server.url)
        assert leftovers(cache) == ["archives"] and server.requests == 2
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()



def assert_restores(config, original, extracted: Path) -> None:
    """The rendered config fine-tunes from the extracted zoo checkpoint: a model built from it
    gets the saved feature extractor's values (as the OD API restores type ``detection``)."""
    import tensorflow as tf

    tc = config.train_config
    assert tc.fine_tune_checkpoint_type == "detection"
    assert tc.fine_tune_checkpoint.startswith(str(extracted))
    fresh = build_model(config)
    restore_map = fresh.restore_from_objects(fine_tune_checkpoint_type="detection")
    pairs = [pair for name in restored_parts(restore_map) for pair in zip(
        getattr(fresh, name).variables, getattr(original, name).variables, strict=True)]
    assert pairs and any(not np.array_equal(a.numpy(), b.numpy()) for a, b in pairs)
    tf.train.Checkpoint(**restore_map).restore(
        tc.fine_tune_checkpoint).expect_partial().assert_existing_objects_matched()
    for restored, saved in pairs:
        assert np.array_equal(restored.numpy(), saved.numpy()), restored.name


def restored_parts(restore_map: dict) -> list[str]:
    """Attribute names of the model parts a ``detection`` restore map covers (the SSD feature
    extractor with its FPN; Faster R-CNN's two feature extractors)."""
    (fake_model,) = restore_map.values()
    return sorted(fake_model._trackable_children())
