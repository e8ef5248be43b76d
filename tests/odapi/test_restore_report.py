"""Hook E: after a fine-tuning restore, each variable of the restore map is checked against the
checkpoint's value; the variables outside the map are listed as freshly initialised."""
from __future__ import annotations

import pytest

from pipeline.core import compat
from pipeline.odapi import restore_report


class TinyDetector:
    """Stands for a detection model: a feature extractor the restore map covers, a head it
    does not (as the OD API's ``restore_from_objects`` for type ``detection``)."""

    def __init__(self, seed: int):
        import tensorflow as tf

        tf.random.set_seed(seed)
        self.extractor = tf.keras.Sequential([tf.keras.layers.Dense(3), tf.keras.layers.Dense(2)])
        self.extractor.build((None, 4))
        self.head = tf.keras.layers.Dense(5, name="class_head")
        self.head.build((None, 2))

    @property
    def variables(self):
        return self.extractor.variables + self.head.variables

    def restore_from_objects(self, fine_tune_checkpoint_type):
        import tensorflow as tf

        assert fine_tune_checkpoint_type == "detection"
        return {"model": tf.train.Checkpoint(_feature_extractor=self.extractor)}


@pytest.fixture
def checkpoint(tmp_path) -> str:
    import tensorflow as tf

    pretrained = TinyDetector(seed=1)
    return tf.train.Checkpoint(**pretrained.restore_from_objects("detection")).save(
        str(tmp_path / "ckpt"))


def restore(model: TinyDetector, checkpoint: str) -> None:
    import tensorflow as tf

    tf.train.Checkpoint(**model.restore_from_objects("detection")).restore(checkpoint) \
        .assert_existing_objects_matched()


def test_restored_variables_are_counted_by_value_and_the_head_is_fresh(checkpoint):
    model = TinyDetector(seed=2)
    restore(model, checkpoint)
    report = restore_report.compare(model, checkpoint, "detection")
    assert report["restored_variables"] == 4 and report["unrestored_variables"] == 0
    assert report["freshly_initialised_variables"] == 2
    assert report["freshly_initialised"] == sorted(v.name for v in model.head.variables)


def test_a_covered_variable_whose_value_differs_is_reported_unrestored(checkpoint):
    model = TinyDetector(seed=2)
    restore(model, checkpoint)
    kernel = model.extractor.layers[0].kernel
    kernel.assign(kernel + 1.0)  # as if the restore had skipped it
    report = restore_report.compare(model, checkpoint, "detection")
    assert report["restored_variables"] == 3 and report["unrestored_variables"] == 1
    assert report["unrestored"] == [
        "model/_feature_extractor/layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE"]


def test_the_hook_reports_each_restore_to_the_callback(checkpoint, monkeypatch):
    compat.apply()
    from object_detection import model_lib_v2

    monkeypatch.setattr(model_lib_v2, "load_fine_tune_checkpoint",
                        lambda model, path, kind, *args, **kwargs: restore(model, path))
    reports = []
    restore_report.observe_restores(reports.append)
    try:
        model_lib_v2.load_fine_tune_checkpoint(TinyDetector(seed=3), checkpoint, "detection",
                                               "V2", False, None, False)
    finally:
        restore_report.observe_restores(None)
    assert [r["restored_variables"] for r in reports] == [4]
    assert reports[0]["checkpoint"] == checkpoint
