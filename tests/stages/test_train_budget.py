"""Acceptance tests of `train.time_budget_minutes` and `train.early_stopping` on the miniature
project (128 px, batch 2): a budget ends training within it (the final evaluation follows) with
the learning rate schedule ending too; early stopping stops after its patience, the best
checkpoint and the files still written, the MLflow run tagged."""
from __future__ import annotations

import csv
import hashlib
import json
import re
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.stages.test_end_to_end import make_project, run
from tests.stages.test_train_resilience import checkpoint_step, train_runs

pytestmark = pytest.mark.slow

#: long enough for the first segment (process and TensorFlow start-up, model building, 30 measured
#: steps: about 60 s on 2 busy cores) and a second one (its own ~40 s start-up, then steps)
BUDGET_MINUTES = 2.5
MINI_PARAMS = {
    "sample": {"num_images": 24, "image_size": 128, "max_objects": 3, "val_fraction": 0.2,
               "test_fraction": 0.2, "seed": 1},
    "model": {"image_size": 128},
    "train": {"batch_size": 2, "num_steps": 60, "warmup_steps": 2, "learning_rate": 0.02},
}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    project = make_project(tmp_path_factory.mktemp("budget") / "proj", MINI_PARAMS)
    run(["dvc", "repro", "configure"], project)
    return project


def train(project: Path, name: str, **train_params) -> str:
    """Run the train stage into models/<name> with these train params; its log."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"].update(train_params)
    (project / f"{name}.yaml").write_text(yaml.safe_dump(params))
    result = run([sys.executable, "-m", "pipeline", "train", "--params", f"{name}.yaml",
                  "--model-dir", f"models/{name}", "--curves", f"reports/{name}_curves.csv",
                  "--eval-curves", f"reports/{name}_eval.csv",
                  "--metrics", f"reports/{name}_metrics.json"], project)
    return result.stdout + result.stderr


def last_step_summary(event_dir: Path) -> tuple[int, float]:
    """(step, wall time) of the last training step summary the OD API wrote."""
    import tensorflow as tf

    points = [(event.step, event.wall_time) for path in event_dir.glob("events.out.tfevents.*")
              for event in tf.compat.v1.train.summary_iterator(str(path))
              if any(value.tag == "steps_per_sec" for value in event.summary.value)]
    return max(points)


def test_a_time_budget_ends_training_within_it_and_the_schedule_with_it(project):
    configured = hashlib.sha256((project / "models/pipeline.config").read_bytes()).hexdigest()
    started = time.time()
    log = train(project, "budget", time_budget_minutes=BUDGET_MINUTES, eval_every_n=50,
                checkpoint_every_n=1000)
    plan = re.search(r"time budget 2\.5 min: (\d+) steps at [\d.]+ s/step, \d+ evaluations? "
                     r"\(estimated \d+ s each; \d+ s to start each training segment\)", log)
    assert plan, log[-4000:]
    planned = int(plan.group(1))
    last_step, last_wall = last_step_summary(project / "models/budget/train")
    print(plan.group(0))
    print(f"planned {planned} steps; the last one {last_wall - started:.1f} s after the start "
          f"for a budget of {60 * BUDGET_MINUTES:.0f} s")
    assert planned > 30, plan.group(0)  # more than the measuring segment: a second one
    assert last_step == planned == checkpoint_step(project / "models/budget")
    # Within the budget (10% for a busy machine's drift from the measured step time).
    assert last_wall - started <= 1.1 * 60 * BUDGET_MINUTES
    with (project / "reports/budget_curves.csv").open() as handle:
        rates = [float(row["learning_rate"]) for row in csv.DictReader(handle)
                 if row["learning_rate"]]
    assert rates[-1] < 0.05 * max(rates)  # the cosine decay ended with the budget
    assert json.loads((project / "reports/budget_metrics.json").read_text())[
        "final_step"] == planned
    assert hashlib.sha256((project / "models/pipeline.config").read_bytes()).hexdigest() == (
        configured)  # configure's output untouched: the plan trains from a copy
    client, _ = train_runs(f"sqlite:///{project / 'mlflow.db'}")
    run_id = json.loads((project / "models/budget/mlflow_run.json").read_text())["run_id"]
    assert client.get_run(run_id).data.params["budget.num_steps"] == str(planned)


def test_early_stopping_stops_after_its_patience_and_exports_the_best(project):
    log = train(project, "patience", early_stopping=1, eval_every_n=10, best_metric="map")
    stop = re.search(r"stopping early at step (\d+) of 60: map has not improved for 1 "
                     r"evaluation \(patience train\.early_stopping: 1; best [\d.]+ at step "
                     r"(\d+)\)", log)
    assert stop, log[-4000:]
    stopped, best = int(stop.group(1)), int(stop.group(2))
    assert stopped < 60 and checkpoint_step(project / "models/patience") == stopped
    history = json.loads((project / "models/patience/eval_history.json").read_text())
    assert sorted(map(int, history)) == list(range(10, stopped + 1, 10))
    name = "DetectionBoxes_Precision/mAP"
    assert history[str(stopped)][name] <= max(history[s][name] for s in history
                                             if int(s) < stopped)  # no better: it stopped
    metrics = json.loads((project / "reports/patience_metrics.json").read_text())
    assert (metrics["final_step"], metrics["best_step"]) == (stopped, best)
    assert (project / "models/patience/best/checkpoint").is_file()
    assert (project / "reports/patience_curves.csv").is_file()
    client, _ = train_runs(f"sqlite:///{project / 'mlflow.db'}")
    run_id = json.loads((project / "models/patience/mlflow_run.json").read_text())["run_id"]
    tags = client.get_run(run_id).data.tags
    assert tags["stopped_early"] == "true" and tags["stopped_early.step"] == str(stopped)
