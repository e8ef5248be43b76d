"""The train stage's pure parts: strategy flags, resume decisions, progress, NaN guard, outputs."""
import json
import logging
import math
import subprocess
import sys

import pytest

from pipeline.core import layout
from pipeline.training import checkpoint_eval
from pipeline.stages import train
from pipeline.core.params import Params, ParamsError, TrainParams, params_from_dict


def test_default_argv_lets_model_main_use_mirrored_strategy_on_local_devices(tmp_path):
    argv = train.model_main_argv(tmp_path / "p.config", tmp_path / "m", 300, 100)
    assert argv[0] == "model_main_tf2"
    assert f"--pipeline_config_path={tmp_path / 'p.config'}" in argv
    assert "--num_train_steps=300" in argv and "--checkpoint_every_n=100" in argv
    assert "--num_workers=1" in argv
    assert not any(a.startswith(("--use_tpu", "--tpu_name")) for a in argv)


# model_main_tf2's absl flags clash with exporter_main_v2's (both define pipeline_config_path),
# so they are parsed in a fresh interpreter, as the train stage's own process does.
_PARSE_MODEL_MAIN_FLAGS = """
import json, sys
from pipeline.core import compat
compat.apply()
from absl import flags
from object_detection import model_main_tf2  # noqa: F401 - defines the flags
flags.FLAGS(json.loads(sys.argv[1]))
print(json.dumps({k: flags.FLAGS[k].value for k in ("num_workers", "use_tpu", "tpu_name",
                                                      "num_train_steps")}))
"""


def parsed_model_main_flags(argv: list[str]) -> dict:
    result = subprocess.run([sys.executable, "-c", _PARSE_MODEL_MAIN_FLAGS, json.dumps(argv)],
                            capture_output=True, text=True, timeout=300, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_workers_and_tpu_become_model_main_flags_it_parses(tmp_path):
    argv = train.model_main_argv(tmp_path / "p.config", tmp_path / "m", 10, 5, num_workers=4)
    parsed = parsed_model_main_flags(argv)
    assert parsed["num_workers"] == 4 and not parsed["use_tpu"]
    argv = train.model_main_argv(tmp_path / "p.config", tmp_path / "m", 10, 5, tpu_name="tpu-1")
    parsed = parsed_model_main_flags(argv)
    assert parsed["use_tpu"] and parsed["tpu_name"] == "tpu-1"
    assert parsed["num_train_steps"] == 10


def test_workers_and_tpu_are_exclusive_in_params():
    with pytest.raises(ParamsError, match="exclusive"):
        params_from_dict({"train": {"num_workers": 2, "tpu_name": "t"}})
    with pytest.raises(ParamsError, match="best_metric"):
        params_from_dict({"train": {"best_metric": "accuracy"}})


@pytest.mark.parametrize("start, steps, every, expected", [
    (0, 800, 200, [200, 400, 600, 800]),
    (300, 800, 200, [400, 600, 800]),
    (0, 50, 0, [50]),
    (0, 250, 100, [100, 200, 250]),
    (800, 800, 200, []),
])
def test_segments_end_at_each_evaluation_and_at_the_last_step(start, steps, every, expected):
    assert train.segment_ends(start, steps, every) == expected


FP = {"model": "a", "label_map": "b", "train_config": "c", "train_data": "d"}


def _checkpointed_dir(tmp_path, fingerprint):
    model_dir = tmp_path / "train"
    model_dir.mkdir()
    (model_dir / "checkpoint").write_text('model_checkpoint_path: "ckpt-3"\n')
    (model_dir / "ckpt-3.index").write_text("x")
    (model_dir / layout.FINGERPRINT_FILE).write_text(json.dumps(fingerprint))
    return model_dir


def test_same_fingerprint_keeps_the_checkpoints_to_resume_from(tmp_path, monkeypatch):
    monkeypatch.setattr(train.training_hooks, "checkpoint_step", lambda d: 300)
    model_dir = _checkpointed_dir(tmp_path, FP)
    train.prepare_model_dir(model_dir, dict(FP))
    assert (model_dir / "ckpt-3.index").is_file()


def test_other_classes_start_a_fresh_directory_and_say_what_changed(tmp_path, caplog):
    model_dir = _checkpointed_dir(tmp_path, FP)
    with caplog.at_level(logging.WARNING):
        train.prepare_model_dir(model_dir, {**FP, "label_map": "other", "model": "other"})
    assert not (model_dir / "ckpt-3.index").exists()
    assert "changed: label_map, model" in caplog.text and "starting a fresh" in caplog.text
    assert json.loads((model_dir / layout.FINGERPRINT_FILE).read_text())["label_map"] == "other"


def test_checkpoints_without_a_fingerprint_are_not_trusted(tmp_path):
    model_dir = _checkpointed_dir(tmp_path, FP)
    (model_dir / layout.FINGERPRINT_FILE).unlink()
    train.prepare_model_dir(model_dir, FP)
    assert not (model_dir / "checkpoint").exists()


def test_a_folder_that_is_not_a_training_folder_is_never_emptied(tmp_path):
    from pipeline.core.errors import PipelineError

    model_dir = tmp_path / "data"
    model_dir.mkdir()
    (model_dir / "dataset.csv").write_text("precious")
    with pytest.raises(PipelineError, match="not written by this project"):
        train.prepare_model_dir(model_dir, FP)
    assert (model_dir / "dataset.csv").read_text() == "precious"
    train.prepare_model_dir(tmp_path / "new", FP)  # absent or empty: fine
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
    first = train.fingerprint(config)
    assert train.fingerprint(config) == first
    write(2)
    assert train.fingerprint(config)["model"] != first["model"]
    write(1)
    label_map.write_text("item { id: 1 name: 'b' }\n")
    changed = train.fingerprint(config)
    assert changed["label_map"] != first["label_map"] and changed["model"] == first["model"]
    seeded = train.fingerprint(config, TrainParams(seed=1))
    assert seeded["train_params"] != train.fingerprint(config, TrainParams(seed=2))["train_params"]


def test_monitor_stops_on_nan_and_inf_and_remembers_the_step(tmp_path):
    monitor = train.TrainMonitor(100, 4, tmp_path)
    monitor(1, 2.5)
    with pytest.raises(FloatingPointError):
        monitor(2, math.inf)
    assert monitor.non_finite == (2, math.inf)
    monitor = train.TrainMonitor(100, 4, tmp_path)
    with pytest.raises(FloatingPointError):
        monitor(7, math.nan)
    assert monitor.non_finite[0] == 7


def test_stop_message_names_step_checkpoint_and_causes(tmp_path, monkeypatch):
    monkeypatch.setattr(train, "_latest_checkpoint", lambda d: f"{d}/ckpt-1")
    monkeypatch.setattr(train.training_hooks, "checkpoint_step", lambda d: 0)
    monitor = train.TrainMonitor(100, 4, tmp_path)
    monitor.non_finite = (3, math.nan)
    message = monitor.stop_message(Params(train=TrainParams(learning_rate=9.0, batch_size=4)))
    assert "loss is nan at step 3" in message
    assert f"Last good checkpoint: {tmp_path}/ckpt-1 (step 0)" in message
    assert "train.learning_rate 9.0 at train.batch_size 4" in message
    assert "degenerate boxes" in message and "nothing is exported" in message


def test_monitor_logs_progress_once_per_step_across_replicas(tmp_path, caplog):
    monitor = train.TrainMonitor(10, 4, tmp_path, every_seconds=0)
    with caplog.at_level(logging.INFO, logger="pipeline.stages.train"):
        for step in (1, 1, 2, 2, 3):
            monitor(step, 1.0)
    assert [r.message.split(" loss")[0] for r in caplog.records] == [
        "step 1/10 (10%)", "step 2/10 (20%)", "step 3/10 (30%)"]


def test_progress_line_shows_images_per_second_and_eta():
    line = train.progress_line(120, 800, 1.23456, steps_done=100, seconds=50.0, batch_size=16)
    assert line == "step 120/800 (15%) loss 1.2346 | 32.0 img/s | ETA 5m40s"
    assert train.progress_line(1, 800, 2.0, 0, 0.0, 16) == "step 1/800 (0%) loss 2.0000"


def _metrics(map_value, loss):
    return {"DetectionBoxes_Precision/mAP": map_value, "DetectionBoxes_Precision/mAP@.50IOU": 0.9,
            "Loss/total_loss": loss}


def test_best_is_chosen_by_the_metric_and_its_direction():
    assert checkpoint_eval.is_better("map", _metrics(0.5, 1.0), _metrics(0.4, 0.5))
    assert not checkpoint_eval.is_better("val_loss", _metrics(0.5, 1.0), _metrics(0.4, 0.5))
    assert checkpoint_eval.is_better("val_loss", _metrics(0.1, 0.4), _metrics(0.4, 0.5))
    assert not checkpoint_eval.is_better("map", _metrics(0.4, 1.0), _metrics(0.4, 0.5))  # tie
    assert checkpoint_eval.is_better("map", _metrics(0.0, 1.0), None)


def test_eval_curves_and_metrics_files(tmp_path):
    history = {"20": _metrics(0.3, 0.8), "10": _metrics(0.5, 0.9)}
    train.write_eval_curves(history, tmp_path / "eval.csv")
    assert (tmp_path / "eval.csv").read_text().splitlines() == [
        "step,map,map_50,map_75,mar_100,val_loss", "10,0.5,0.9,,,0.9", "20,0.3,0.9,,,0.8"]
    params = Params(train=TrainParams(num_steps=20, warmup_steps=1))
    train.write_metrics(history, {"step": 10}, params, tmp_path / "m.json")
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["best_step"] == 10 and metrics["best"]["map"] == 0.5
    assert metrics["final_step"] == 20 and metrics["final"]["val_loss"] == 0.8


def test_copy_best_writes_a_checkpoint_directory_export_can_read(tmp_path):
    model_dir = tmp_path / "train"
    model_dir.mkdir()
    for suffix in ("index", "data-00000-of-00001"):
        (model_dir / f"ckpt-4.{suffix}").write_text(suffix)
    (model_dir / "ckpt-40.index").write_text("not this one")
    (model_dir / "mlflow_run.json").write_text('{"run_id": "abc"}\n')
    train.copy_best(str(model_dir / "ckpt-4"), 30, model_dir)
    best = model_dir / "best"
    assert sorted(p.name for p in best.iterdir()) == [
        "best.json", "checkpoint", "ckpt-4.data-00000-of-00001", "ckpt-4.index",
        "mlflow_run.json"]
    assert 'model_checkpoint_path: "ckpt-4"' in (best / "checkpoint").read_text()
    assert train.read_best(model_dir) == {"step": 30, "checkpoint": "ckpt-4"}


def test_dataset_hash_comes_from_dvc_lock(tmp_path):
    lock = tmp_path / "dvc.lock"
    lock.write_text("schema: '2.0'\nstages:\n  convert:\n    outs:\n    - path: data/tfrecords\n"
                    "      md5: 0123abc.dir\n")
    from pathlib import Path

    assert train.dataset_hash(lock, Path("data/tfrecords")) == "0123abc.dir"
    assert train.dataset_hash(lock, Path("data/other")) == "unknown"
    assert train.dataset_hash(tmp_path / "none.lock", Path("data/tfrecords")) == "unknown"


def test_pipeline_config_is_flattened_into_params():
    from pipeline.core import compat
    from pipeline.core.layout import CONFIGS_DIR

    compat.apply()
    flat = train.flatten_config(CONFIGS_DIR / "ssd_mobilenet_v2_fpnlite_cpu.config")
    assert flat["config.model.ssd.image_resizer.fixed_shape_resizer.height"] == "256"
    assert "config.train_config.batch_size" in flat
    assert all(len(k) <= 250 and len(v) <= 6000 for k, v in flat.items())  # MLflow's limits
