"""The train stage: params it refuses, what it records in MLflow."""
import json

import pytest

from pipeline.stages import train
from pipeline.core.params import ParamsError, params_from_dict


def test_workers_and_tpu_are_exclusive_in_params():
    with pytest.raises(ParamsError, match="exclusive"):
        params_from_dict({"train": {"num_workers": 2, "tpu_name": "t"}})
    with pytest.raises(ParamsError, match="best_metric"):
        params_from_dict({"train": {"best_metric": "accuracy"}})


def test_pipeline_config_is_flattened_into_params():
    from pipeline.core import compat
    from pipeline.core.layout import CONFIGS_DIR

    compat.apply()
    flat = train.flatten_config(CONFIGS_DIR / "ssd_mobilenet_v2_fpnlite_cpu.config")
    assert flat["config.model.ssd.image_resizer.fixed_shape_resizer.height"] == "256"
    assert "config.train_config.batch_size" in flat
    assert all(len(k) <= 250 and len(v) <= 6000 for k, v in flat.items())  # MLflow's limits


class FakeJournal:
    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *args: self.calls.append((name, *args))


def test_the_journal_follows_the_training_events(tmp_path):
    from argparse import Namespace

    from pipeline.core.params import Params

    model_dir = tmp_path / "train"
    model_dir.mkdir()
    (model_dir / "mlflow_run.json").write_text('{"run_id": "abc"}\n')
    args = Namespace(model_dir=model_dir, metrics=tmp_path / "m.json")
    journal = FakeJournal()
    callbacks = train.JournalCallbacks(journal, args, Params())
    best = model_dir / "best.partial"
    best.mkdir()
    callbacks.on_best_checkpoint(10, best)
    assert json.loads((best / "mlflow_run.json").read_text())["run_id"] == "abc"
    callbacks.on_train_failed(RuntimeError("nan"))
    callbacks.on_train_end()
    assert journal.calls == [("status", "FAILED"), ("send",), ("artifact", tmp_path / "m.json",
                             "eval"), ("status", "FINISHED"), ("send",)]


def test_the_restore_report_goes_to_the_journal(tmp_path):
    from argparse import Namespace

    from pipeline.core import layout
    from pipeline.core.params import Params

    journal = FakeJournal()
    callbacks = train.JournalCallbacks(journal, Namespace(model_dir=tmp_path), Params())
    callbacks.on_fine_tune_restore({"restored_variables": 284, "unrestored_variables": 0,
                                    "freshly_initialised_variables": 42, "unrestored": []})
    assert journal.calls == [
        ("params", {"fine_tune.restored_variables": 284, "fine_tune.unrestored_variables": 0,
                    "fine_tune.freshly_initialised_variables": 42}),
        ("artifact", tmp_path / layout.FINE_TUNE_RESTORE_FILE, "fine_tune"), ("send",)]


def test_the_budget_plan_and_an_early_stop_go_to_the_journal(tmp_path):
    from argparse import Namespace

    from pipeline.core import layout
    from pipeline.core.params import Params
    from pipeline.training import budget

    journal = FakeJournal()
    callbacks = train.JournalCallbacks(journal, Namespace(model_dir=tmp_path), Params())
    callbacks.on_budget_planned(budget.Plan(7, 760, 0.47, 17.0, 11.0, 2))
    callbacks.on_stopped_early(400, "map has not improved for 2 evaluations")
    assert journal.calls == [
        ("params", {"budget.budget_minutes": 7, "budget.num_steps": 760,
                    "budget.seconds_per_step": 0.47, "budget.restart_seconds": 17.0,
                    "budget.evaluation_seconds": 11.0, "budget.evaluations": 2}),
        ("artifact", tmp_path / layout.BUDGET_CONFIG_FILE, "budget"), ("send",),
        ("tags", {"stopped_early": "true", "stopped_early.step": "400",
                  "stopped_early.reason": "map has not improved for 2 evaluations"}),
        ("send",)]
