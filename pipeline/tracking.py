"""MLflow logging shared by the stages.

How stages map to runs: ``train`` starts one MLflow run per trained model and writes its id to
``<model_dir>/mlflow_run.json`` (and ``<model_dir>/best/``); a resumed training continues it; ``export`` copies that file into the export directory and
``report`` continues the same run, so one run holds the params, the training curves, the
exported model's smoke check and the test metrics. ``sample`` and ``convert`` record runs of
their own (tag ``pipeline.stage``) with the dataset's figures and report.

The tracking store is ``mlflow.tracking_uri`` from params (a SQLite file in the repository by
default); the ``MLFLOW_TRACKING_URI`` environment variable overrides it.

``train`` does not talk to MLflow directly: it appends every param, tag, metric and artifact to
a :class:`RunJournal` (a JSONL file in the model directory) and sends what is new after each
evaluation. When the server is unreachable the records stay in the journal and training goes
on; ``python -m pipeline sync-mlflow --model-dir models/train`` sends them later.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from pipeline.params import MlflowParams, Params

log = logging.getLogger(__name__)

RUN_FILE = "mlflow_run.json"


def tracking_uri(settings: MlflowParams) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or settings.tracking_uri


def configure_client(settings: MlflowParams) -> None:
    """Bound MLflow's HTTP retries and timeouts (the environment still overrides them)."""
    # MLflow's telemetry would try to reach the internet on every run.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # By default a dead tracking server is retried 7 times with exponential backoff (minutes).
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(settings.http_max_retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(settings.http_timeout_s))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")


def _mlflow(settings: MlflowParams):
    configure_client(settings)
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
    return _client_has_run(mlflow, run_id)


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


JOURNAL_FILE = "mlflow_journal.jsonl"
SENT_FILE = "mlflow_journal.sent"
#: MLflow's limits per log_batch call
_BATCH_METRICS, _BATCH_PARAMS = 1000, 100


class RunJournal:
    """MLflow records of one run, kept in ``<directory>/mlflow_journal.jsonl`` until sent.

    Each line is one record: ``{"kind": "metric", "key", "value", "step", "timestamp"}``,
    ``{"kind": "param"|"tag", "key", "value"}``, ``{"kind": "artifact", "path", "artifact_path"}``
    or ``{"kind": "status", "value"}``. ``mlflow_journal.sent`` counts the lines already sent,
    so :meth:`send` is cheap to call often and sends each record once.
    """

    def __init__(self, settings: MlflowParams, directory: Path, stage: str = "train"):
        self.settings, self.directory, self.stage = settings, Path(directory), stage
        self.path = self.directory / JOURNAL_FILE

    def params(self, values: dict[str, Any]) -> None:
        self._append([{"kind": "param", "key": k, "value": str(v)} for k, v in values.items()])

    def tags(self, values: dict[str, str]) -> None:
        self._append([{"kind": "tag", "key": k, "value": str(v)} for k, v in values.items()])

    def metrics(self, points: list[tuple[str, int, float]]) -> None:
        """Record ``(name, step, value)`` points; a name/step already recorded is skipped."""
        seen = self.metric_steps()
        now = int(time.time() * 1000)
        self._append([{"kind": "metric", "key": metric_name(k), "value": v, "step": s,
                       "timestamp": now} for k, s, v in points if (metric_name(k), s) not in seen])

    def artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if Path(path).is_file():
            self._append([{"kind": "artifact", "path": str(Path(path).resolve()),
                           "artifact_path": artifact_path}])
        else:
            log.warning("not logged to MLflow (missing): %s", path)

    def status(self, value: str) -> None:
        """Record the run's final status (``FINISHED`` or ``FAILED``)."""
        self._append([{"kind": "status", "value": value}])

    def records(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]

    def metric_steps(self) -> set[tuple[str, int]]:
        return {(r["key"], r["step"]) for r in self.records() if r["kind"] == "metric"}

    def _append(self, records: list[dict]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.writelines(json.dumps(r) + "\n" for r in records)

    def sent_count(self) -> int:
        path = self.directory / SENT_FILE
        return int(path.read_text()) if path.is_file() else 0

    def send(self) -> bool:
        """Send the records not sent yet; False (with a warning) when MLflow is unreachable."""
        records = self.records()
        pending = records[self.sent_count():]
        if not pending:
            return True
        try:
            run_id = self._send(pending)
        except Exception as err:  # noqa: BLE001 - no tracking failure may stop training
            log.warning("MLflow at %s unreachable (%s: %s); %d record(s) kept in %s, send them "
                        "later with: python -m pipeline sync-mlflow --model-dir %s",
                        tracking_uri(self.settings), type(err).__name__, str(err)[:200],
                        len(pending), self.path, self.directory)
            return False
        (self.directory / SENT_FILE).write_text(f"{len(records)}\n")
        log.info("MLflow run %s: %d record(s) sent to %s", run_id, len(pending),
                 tracking_uri(self.settings))
        return True

    def _send(self, pending: list[dict]) -> str:
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.tracking import MlflowClient

        configure_client(self.settings)
        client = MlflowClient(tracking_uri(self.settings))
        run_id = self._run_id(client)
        by_kind = {kind: [r for r in pending if r["kind"] == kind]
                   for kind in ("param", "tag", "metric", "artifact", "status")}
        for chunk in _chunks(by_kind["param"], _BATCH_PARAMS):
            client.log_batch(run_id, params=[Param(r["key"], r["value"]) for r in chunk])
        client.log_batch(run_id, tags=[RunTag(r["key"], r["value"]) for r in by_kind["tag"]])
        for chunk in _chunks(by_kind["metric"], _BATCH_METRICS):
            client.log_batch(run_id, metrics=[
                Metric(r["key"], r["value"], r["timestamp"], r["step"]) for r in chunk])
        for record in by_kind["artifact"]:
            client.log_artifact(run_id, record["path"], record["artifact_path"])
        for record in by_kind["status"]:
            client.set_terminated(run_id, record["value"])
        return run_id

    def _run_id(self, client) -> str:
        """The run recorded in the directory, or a new one (its id written to the run file)."""
        run_id = read_run_file(self.directory)
        if run_id and _client_has_run(client, run_id):
            return run_id
        if run_id:
            log.warning("MLflow run %s is not in %s; starting a new run",
                        run_id, tracking_uri(self.settings))
        experiment = client.get_experiment_by_name(self.settings.experiment)
        experiment_id = (experiment.experiment_id if experiment
                         else client.create_experiment(self.settings.experiment))
        run = client.create_run(experiment_id, run_name=self.stage, tags={
            "pipeline.stage": self.stage, f"pipeline.stage.{self.stage}": "done"})
        write_run_file(self.directory, run.info.run_id)
        return run.info.run_id


def _client_has_run(client, run_id: str) -> bool:
    """Whether the store knows ``run_id``; other errors (server unreachable) propagate."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_run(run_id)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise
    return True


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
