"""The training folder (pipeline/training/model_dir.py): resume or fresh start, best copy."""
import json
import logging

import pytest

from pipeline.core import layout
from pipeline.training import model_dir as training_dir
from tests.training.test_loop import make_run


FP = {"model": "a", "label_map": "b", "train_config": "c", "train_data": "d"}


def _checkpointed_dir(tmp_path, fingerprint):
    model_dir = tmp_path / "train"
    model_dir.mkdir()
    (model_dir / "checkpoint").write_text('model_checkpoint_path: "ckpt-3"\n')
    (model_dir / "ckpt-3.index").write_text("x")
    (model_dir / layout.FINGERPRINT_FILE).write_text(json.dumps(fingerprint))
    return model_dir


def test_same_fingerprint_keeps_the_checkpoints_to_resume_from(tmp_path, monkeypatch):
    monkeypatch.setattr(training_dir.training_hooks, "checkpoint_step", lambda d: 300)
    model_dir = _checkpointed_dir(tmp_path, FP)
    assert training_dir.prepare_model_dir(model_dir, dict(FP)) == 300  # the step to resume at
    assert (model_dir / "ckpt-3.index").is_file()


def test_other_classes_start_a_fresh_directory_and_say_what_changed(tmp_path, caplog):
    model_dir = _checkpointed_dir(tmp_path, FP)
    with caplog.at_level(logging.WARNING):
        training_dir.prepare_model_dir(model_dir, {**FP, "label_map": "other", "model": "other"})
    assert not (model_dir / "ckpt-3.index").exists()
    assert "changed: label_map, model" in caplog.text and "starting a fresh" in caplog.text
    assert json.loads((model_dir / layout.FINGERPRINT_FILE).read_text())["label_map"] == "other"


def test_checkpoints_without_a_fingerprint_are_not_trusted(tmp_path):
    model_dir = _checkpointed_dir(tmp_path, FP)
    (model_dir / layout.FINGERPRINT_FILE).unlink()
    training_dir.prepare_model_dir(model_dir, FP)
    assert not (model_dir / "checkpoint").exists()


def test_a_folder_that_is_not_a_training_folder_is_never_emptied(tmp_path):
    from pipeline.core.errors import PipelineError

    model_dir = tmp_path / "data"
    model_dir.mkdir()
    (model_dir / "dataset.csv").write_text("precious")
    with pytest.raises(PipelineError, match="not written by this project"):
        training_dir.prepare_model_dir(model_dir, FP)
    assert (model_dir / "dataset.csv").read_text() == "precious"
    training_dir.prepare_model_dir(tmp_path / "new", FP)  # absent or empty: fine
    assert (tmp_path / "new" / layout.FINGERPRINT_FILE).is_file()


def test_fingerprint_changes_with_the_model_and_the_classes_not_with_nothing(tmp_path):
    from pipeline.core import compat

    compat.apply()
    label_map = tmp_path / "label_map.pbtxt"
    label_map.write_text("item { id: 1 name: 'a' }\n")
    (tmp_path / "train.tfrecord-00000-of-00001").write_bytes(b"1234")
    config = tmp_path / "p.config"

    def write(num_classes: int) -> None:
        config.write_text(
            f"model {{ ssd {{ num_classes: {num_classes} }} }}\n"
            f"train_input_reader {{ label_map_path: '{label_map}' tf_record_input_reader "
            f"{{ input_path: '{tmp_path}/train.tfrecord-*' }} }}\n")

    write(1)
    first = training_dir.fingerprint(config)
    assert training_dir.fingerprint(config) == first
    write(2)
    assert training_dir.fingerprint(config)["model"] != first["model"]
    write(1)
    label_map.write_text("item { id: 1 name: 'b' }\n")
    changed = training_dir.fingerprint(config)
    assert changed["label_map"] != first["label_map"] and changed["model"] == first["model"]
    seeded = training_dir.fingerprint(config, make_run(config, seed=1))
    reseeded = training_dir.fingerprint(config, make_run(config, seed=2))
    assert seeded["train_params"] != reseeded["train_params"]
    frozen = training_dir.fingerprint(config, make_run(config, seed=1, freeze_backbone_steps=5))
    assert frozen["train_params"] != seeded["train_params"]  # not resumed with other freezing
    assert training_dir.fingerprint(config, make_run(config, seed=1, freeze_backbone_steps=0)
                                    ) == seeded  # 0 (the default) keeps older fingerprints
    budgeted = training_dir.fingerprint(config, make_run(config, seed=1, time_budget_minutes=7))
    assert budgeted["train_params"] != seeded["train_params"]  # another budget, another plan
    assert training_dir.fingerprint(config, make_run(config, seed=1, time_budget_minutes=0,
                                                     early_stopping=3)) == seeded


def test_copy_best_writes_a_checkpoint_directory_export_can_read(tmp_path):
    model_dir = tmp_path / "train"
    model_dir.mkdir()
    for suffix in ("index", "data-00000-of-00001"):
        (model_dir / f"ckpt-4.{suffix}").write_text(suffix)
    (model_dir / "ckpt-40.index").write_text("not this one")
    training_dir.copy_best(str(model_dir / "ckpt-4"), 30, model_dir,
                           lambda folder: (folder / "run.json").write_text("{}"))
    best = model_dir / "best"
    assert sorted(p.name for p in best.iterdir()) == [
        "best.json", "checkpoint", "ckpt-4.data-00000-of-00001", "ckpt-4.index", "run.json"]
    assert 'model_checkpoint_path: "ckpt-4"' in (best / "checkpoint").read_text()
    assert training_dir.read_best(model_dir) == {"step": 30, "checkpoint": "ckpt-4"}
