"""Fine-tuning end to end through real `dvc repro` (slow): the default model trained on the
sample (dataset A, 3 shapes) is fine-tuned on another class set (dataset B, 2 other shapes,
another num_classes) from its checkpoint, with the backbone frozen for the first 2 of 4 steps.
The backbone and FPN are restored with the checkpoint's values, the class head starts fresh,
the counts are in fine_tune_restore.json and MLflow, and the train process exits cleanly."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.core import layout
from tests.stages.test_end_to_end import make_project, run

pytestmark = pytest.mark.slow

TINY = {"sample": {"num_images": 10, "image_size": 64, "max_objects": 2, "val_fraction": 0.0,
                   "test_fraction": 0.0},
        "model": {"image_size": 64},
        "train": {"batch_size": 2, "warmup_steps": 0, "eval_every_n": 0,
                  "checkpoint_every_n": 1000}}
VALUE = "/.ATTRIBUTES/VARIABLE_VALUE"
EXTRACTOR = "model/_feature_extractor/"
BACKBONE = EXTRACTOR + "classification_backbone/"


def project_with(directory: Path, sample: dict, train: dict, model: dict | None = None) -> Path:
    return make_project(directory, {"sample": {**TINY["sample"], **sample},
                                    "model": {**TINY["model"], **(model or {})},
                                    "train": {**TINY["train"], **train}})


def extractor_and_heads(shapes: dict) -> list[str]:
    """The checkpoint keys of the model's own variables (not the optimizer's slots)."""
    return [k for k in shapes if k.startswith("model/") and k.endswith(VALUE)
            and ".OPTIMIZER_SLOT" not in k]


def checkpoints_by_step(model_dir: Path) -> dict:
    """The checkpoint readers of ``model_dir`` by step; of two at one step, the fuller one
    (train_loop also saves when it starts, before the model's variables exist)."""
    import tensorflow as tf

    readers = sorted((tf.train.load_checkpoint(str(p.with_suffix(""))) for p in
                      model_dir.glob("ckpt-*.index")),
                     key=lambda r: len(r.get_variable_to_shape_map()))
    return {int(r.get_tensor("step" + VALUE)): r for r in readers}


def test_fine_tuning_restores_by_value_freezes_k_steps_and_exits_cleanly(tmp_path):
    a = project_with(tmp_path / "a", {"classes": ["circle", "square", "triangle"]},
                     {"num_steps": 10})
    run(["dvc", "repro", "train"], a)
    (pretrained_prefix,) = {str(p.with_suffix("")) for p in
                            (a / layout.MODEL_DIR / layout.BEST_DIR).glob("ckpt-*.index")}
    b = project_with(tmp_path / "b", {"classes": ["star", "cross"]},
                     {"num_steps": 4, "freeze_backbone_steps": 2},
                     {"checkpoint": pretrained_prefix})
    result = run(["dvc", "repro", "train"], b, check=False)
    assert result.returncode == 0, result.stderr[-3000:]  # no SIGSEGV at exit
    assert "Running stage 'pretrained'" in result.stdout

    import tensorflow as tf

    source = tf.train.load_checkpoint(pretrained_prefix)
    shapes = source.get_variable_to_shape_map()
    extractor = [k for k in extractor_and_heads(shapes) if k.startswith(EXTRACTOR)]
    report = json.loads((b / layout.MODEL_DIR / layout.FINE_TUNE_RESTORE_FILE).read_text())
    assert report["restored_variables"] == len(extractor) > 100
    assert report["unrestored_variables"] == 0 and report["unrestored"] == []
    fresh = report["freshly_initialised"]
    assert fresh and all("BoxPredictor" in name for name in fresh)
    assert report["freshly_initialised_variables"] == len(fresh)

    by_step = checkpoints_by_step(b / layout.MODEL_DIR)
    frozen, tuned = by_step[2], by_step[4]
    # The class head has A's shape (3 classes) in the checkpoint and B's (2) after fine-tuning.
    # (its last kernel: (3 + 1) x 6 anchors outputs in A, (2 + 1) x 6 in B).
    heads = [k for k in extractor_and_heads(shapes) if "class_predictions" in k and "kernel" in k]
    assert heads and any(shapes[k] != tuned.get_variable_to_shape_map()[k] for k in heads)
    # Trainable backbone weights: A's values while frozen (restored, not trained), then trained.
    weights = [k for k in extractor if k.startswith(BACKBONE) and "moving_" not in k]
    assert weights and all(np.array_equal(frozen.get_tensor(k), source.get_tensor(k))
                           for k in weights)
    assert any(not np.array_equal(tuned.get_tensor(k), source.get_tensor(k)) for k in weights)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{b / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("object-detection").experiment_id
    (train_run,) = [r for r in client.search_runs([experiment])
                    if r.data.tags.get("pipeline.stage") == "train"]
    assert train_run.data.params["fine_tune.restored_variables"] == str(len(extractor))
    assert train_run.data.params["fine_tune.unrestored_variables"] == "0"
    assert train_run.data.params["fine_tune.freshly_initialised_variables"] == str(len(fresh))
