"""MLflow logging shared by the stages.

How stages map to runs: ``train`` starts one MLflow run per trained model and writes its id to
``<model_dir>/mlflow_run.json``; ``export`` copies that file into the export directory and
``report`` continues the same run, so one run holds the params, the training curves, the
exported model's smoke check and the test metrics. ``sample`` and ``convert`` record runs of
their own (tag ``pipeline.stage``) with the dataset's figures and report.

The tracking store is ``mlflow.tracking_uri`` from params (a SQLite file in the repository by
default); the ``MLFLOW_TRACKING_URI`` environment variable overrides it.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from pipeline.params import MlflowParams, Params

log = logging.getLogger(__name__)

RUN_FILE = "mlflow_run.json"


def tracking_uri(settings: MlflowParams) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or settings.tracking_uri


def _mlflow(settings: MlflowParams):
    # MLflow's telemetry would try to reach the internet on every run.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(settings))
    mlflow.set_experiment(settings.experiment)
    return mlflow


@contextmanager
def start_run(settings: MlflowParams, stage: str, run_id: str | None = None) -> Iterator[Any]:
    """Start a new run tagged with ``stage``, or continue ``run_id``; yields the mlflow module."""
    mlflow = _mlflow(settings)
    if run_id and not _run_exists(mlflow, run_id):
        log.warning("MLflow run %s is not in %s; recording stage %s in a new run",
                    run_id, tracking_uri(settings), stage)
        run_id = None
    name = None if run_id else stage
    with mlflow.start_run(run_id=run_id, run_name=name):
        mlflow.set_tag(f"pipeline.stage.{stage}", "done")
        if not run_id:
            mlflow.set_tag("pipeline.stage", stage)
        yield mlflow


def _run_exists(mlflow, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        mlflow.get_run(run_id)
    except MlflowException:
        return False
    return True


def flatten_params(params: Params, sections: tuple[str, ...]) -> dict[str, Any]:
    """``{"train.batch_size": 16, ...}`` for the given params sections."""
    flat: dict[str, Any] = {}
    for section in sections:
        for key, value in dataclasses.asdict(getattr(params, section)).items():
            flat[f"{section}.{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


def log_numbers(mlflow, metrics: dict[str, Any], prefix: str = "") -> None:
    """Log every number of a (nested) dict as a metric named by its path; skip the rest."""
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            log_numbers(mlflow, value, prefix=f"{name}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            mlflow.log_metric(metric_name(name), float(value))


def metric_name(name: str) -> str:
    """``name`` with the characters MLflow refuses in metric names replaced by ``_``."""
    # MLflow allows letters, digits, _ - . / and spaces only.
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in name)


def log_existing_artifacts(mlflow, paths: list[Path], artifact_path: str | None = None) -> None:
    for path in paths:
        if path.is_file():
            mlflow.log_artifact(str(path), artifact_path)
        else:
            log.warning("not logged to MLflow (missing): %s", path)


def write_run_file(directory: Path, run_id: str) -> None:
    (directory / RUN_FILE).write_text(json.dumps({"run_id": run_id}) + "\n")


def read_run_file(directory: Path) -> str | None:
    """The MLflow run id recorded in ``directory``, if any."""
    path = directory / RUN_FILE
    return json.loads(path.read_text())["run_id"] if path.is_file() else None
