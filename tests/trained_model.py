"""One tiny trained and exported model shared by the slow tests of export, TFLite, predict,
report and registry (built once per pytest session, cached under the session's temp dir)."""
from __future__ import annotations

from pathlib import Path

from tests.stages.test_end_to_end import make_project, run

TINY_PARAMS = {
    "sample": {"num_images": 30, "image_size": 128, "max_objects": 3, "val_fraction": 0.1,
               "test_fraction": 0.2, "seed": 2},
    "model": {"image_size": 128},
    "train": {"batch_size": 4, "num_steps": 30, "warmup_steps": 3, "learning_rate": 0.03,
              "checkpoint_every_n": 1000},
    "export": {"tflite": ["float32", "int8"], "representative_images": 8},
}


def trained_project(tmp_path_factory) -> Path:
    """A project copy with data/, models/train and models/exported from a real `dvc repro`."""
    root = tmp_path_factory.getbasetemp() / "trained_model"
    project = root / "proj"
    if not (root / "done").is_file():
        make_project(project, TINY_PARAMS)
        run(["dvc", "repro", "export"], project)
        (root / "done").write_text("ok\n")
    return project
