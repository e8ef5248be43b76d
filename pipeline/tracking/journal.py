"""MLflow recording shared by the stages.

How stages map to runs: ``train`` records one run per trained model (tag
``pipeline.stage=train``) and writes its id to ``<model_dir>/mlflow_run.json``; a resumed
training continues it. ``<model_dir>/best/`` and the export directory hold a link to that run
(:func:`link_run`). Each ``export`` and each ``report`` records a run of its own NESTED under
the training run (tag ``mlflow.parentRunId``, tag ``pipeline.stage``) with its params, metrics
and artifacts, so re-running them with other params adds a child run instead of changing the
training run's params (which MLflow refuses); the training run's tag
``pipeline.latest.<stage>`` names its newest child of each stage. One pipeline execution (one
``dvc repro``, see :mod:`pipeline.tracking.execution`) is one top-level run: its ``sample``,
``convert`` and ``configure`` runs are nested under the run of the execution (tag
``pipeline.execution``), and the training of that execution records into that very run (it is
the training run); run by hand, they record top-level runs of their own. The registry version
of a reported model is created from the report run.

The tracking store is ``mlflow.tracking_uri`` from params (a SQLite file in the repository by
default); the ``MLFLOW_TRACKING_URI`` environment variable overrides it.

No stage talks to MLflow directly: each appends every param, tag, metric, artifact and model
registration to a :class:`RunJournal` (a JSONL file) and sends what is new. ``train`` keeps its
journal in the model directory (sent after each evaluation); the other stages use a fresh
journal under :data:`JOURNALS_DIR` per execution, removed once everything is sent. When the
server is unreachable the records stay in the journal, the stage ends normally with a one-line
warning, and ``python -m pipeline sync-mlflow`` sends them later. Param and tag values are
redacted (:func:`pipeline.core.redaction.redact`) before they are written anywhere.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

from pipeline.core import layout
from pipeline.core import files
from pipeline.core.params import MlflowParams, Params
from pipeline.core.redaction import redact
from pipeline.tracking.client import _client_has_run, configure_client, shown_uri, tracking_uri
from pipeline.tracking.client import experiment_id as get_experiment_id

log = logging.getLogger(__name__)

RUN_FILE, JOURNAL_FILE, SENT_FILE = layout.RUN_FILE, layout.JOURNAL_FILE, layout.SENT_FILE
JOURNALS_DIR = layout.JOURNALS_DIR
#: tag of a parent run naming its newest child of a stage: ``pipeline.latest.report``
LATEST_TAG = "pipeline.latest.{stage}"
PARENT_TAG = "mlflow.parentRunId"
STAGE_TAG = "pipeline.stage"
#: tag of the run of a pipeline execution: its key (:mod:`pipeline.tracking.execution`)
EXECUTION_TAG = "pipeline.execution"
#: ``pipeline.stage`` of the run of an execution until its training records into it
EXECUTION_STAGE = "pipeline"
#: MLflow's limits per log_batch call
_BATCH_METRICS, _BATCH_PARAMS = 1000, 100


def flatten_params(params: Params, sections: tuple[str, ...]) -> dict[str, Any]:
    """``{"train.batch_size": 16, ...}`` for the given params sections."""
    flat: dict[str, Any] = {}
    for section in sections:
        for key, value in dataclasses.asdict(getattr(params, section)).items():
            flat[f"{section}.{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


def numbers(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Every number of a (nested) dict, named by its path; the rest (text, None, bool) skipped."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(numbers(value, prefix=f"{name}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def metric_name(name: str) -> str:
    """``name`` with the characters MLflow refuses in metric names replaced by ``_``."""
    # MLflow allows letters, digits, _ - . / and spaces only.
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in name)


# --- run files: which run a directory belongs to ------------------------------------------------


def write_run_file(directory: Path, run_id: str | None, link: str | None = None) -> None:
    """Record ``run_id`` (and, for a copy, the relative ``link`` to the run's own directory)."""
    content = {"run_id": run_id, **({"link": link} if link else {})}
    files.write_text_atomic(Path(directory) / RUN_FILE, json.dumps(content) + "\n")


def _run_info(directory: Path) -> dict:
    path = Path(directory) / RUN_FILE
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text())
    except ValueError:
        log.warning("%s is unreadable (torn by a crash?); ignored", path)
        return {}
    return info if isinstance(info, dict) else {}


def read_run_file(directory: Path) -> str | None:
    """The MLflow run id recorded in ``directory`` (following its link), if any yet."""
    info = _run_info(directory)
    if info.get("run_id"):
        return info["run_id"]
    if info.get("link"):
        return read_run_file(Path(directory) / info["link"])
    return None


def link_run(source: Path, destination: Path) -> None:
    """Make ``destination`` (a copy of a model) belong to the run of ``source``.

    The link is kept even when ``source`` has no run id yet (training recorded while the
    tracking server was down): the run is then looked up when the records are sent.
    """
    if _run_info(source) or (Path(source) / JOURNAL_FILE).is_file():
        link = os.path.relpath(Path(source).resolve(), Path(destination).resolve())
        write_run_file(destination, read_run_file(source), link)


def _resolve_run(settings: MlflowParams, directory: Path) -> str | None:
    """The run of ``directory``, sending the journal that creates it first if needed."""
    directory = Path(directory)
    if (directory / JOURNAL_FILE).is_file():
        journal = RunJournal(settings, directory)
        if not journal.send():
            raise ConnectionError(f"the run of {directory} could not be sent")
    run_id = read_run_file(directory)
    link = _run_info(directory).get("link")
    if run_id is None and link:
        return _resolve_run(settings, directory / link)
    return run_id


# --- the journal --------------------------------------------------------------------------------


class RunJournal:
    """MLflow records of one run, kept in ``<directory>/mlflow_journal.jsonl`` until sent.

    Each line is one record: ``{"kind": "metric", "key", "value", "step", "timestamp"}``,
    ``{"kind": "param"|"tag", "key", "value"}``, ``{"kind": "artifact", "path", "artifact_path"}``,
    ``{"kind": "parent", "run_id"|"directory"}`` (the run is nested under that run),
    ``{"kind": "parent", "execution", "name"}`` (nested under the run of that pipeline
    execution), ``{"kind": "execution", "key", "name"}`` (the run IS the run of that execution),
    ``{"kind": "input", "name", "digest", "source", "context"}`` (a dataset the run used),
    ``{"kind": "register", ...}`` (see :mod:`pipeline.tracking.registry`) or ``{"kind": "status",
    "value"}``. ``mlflow_journal.sent`` counts the records already sent, so :meth:`send` is
    cheap to call often and sends each record once. A torn last line (a crash mid-write) is
    skipped with a warning. With ``copy_artifacts`` each artifact is copied into the journal
    when recorded, so a later run of the stage cannot change what this run sends.
    """

    def __init__(self, settings: MlflowParams, directory: Path, stage: str = "train",
                 copy_artifacts: bool = False):
        self.settings, self.directory, self.stage = settings, Path(directory), stage
        self.copy_artifacts = copy_artifacts
        self.path = self.directory / JOURNAL_FILE

    def params(self, values: dict[str, Any]) -> None:
        """Record params (values redacted)."""
        self._append([{"kind": "param", "key": k, "value": str(redact(v))}
                      for k, v in values.items()])

    def tags(self, values: dict[str, str]) -> None:
        """Record tags (values redacted)."""
        self._append([{"kind": "tag", "key": k, "value": str(redact(v))}
                      for k, v in values.items()])

    def metrics(self, points: list[tuple[str, int, float]]) -> None:
        """Record ``(name, step, value)`` points; a name/step already recorded is skipped."""
        seen = self.metric_steps()
        now = int(time.time() * 1000)
        self._append([{"kind": "metric", "key": metric_name(k), "value": v, "step": s,
                       "timestamp": now} for k, s, v in points if (metric_name(k), s) not in seen])

    def values(self, metrics: dict[str, Any], prefix: str = "") -> None:
        """Record every number of a (nested) dict as a metric named by its path (step 0)."""
        self.metrics([(name, 0, value) for name, value in numbers(metrics, prefix).items()])

    def artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Record a file to upload (a missing file is skipped with a warning)."""
        path = Path(path)
        if not path.is_file():
            log.warning("not logged to MLflow (missing): %s", path)
            return
        if self.copy_artifacts:
            copy = self.directory / "artifacts" / uuid.uuid4().hex[:12] / path.name
            copy.parent.mkdir(parents=True)
            shutil.copy2(path, copy)
            path = copy
        self._append([{"kind": "artifact", "path": str(path.resolve()),
                       "artifact_path": artifact_path}])

    def dataset(self, name: str, digest: str, source: Path, context: str) -> None:
        """Record a dataset input of the run (MLflow's ``log_input``): ``name``, a ``digest``
        of its content, where it is (``source``) and what the run used it for (``context``)."""
        self._append([{"kind": "input", "name": name, "digest": digest,
                       "source": str(Path(source).resolve()), "context": context}])

    def parent(self, directory: Path) -> None:
        """Nest this run under the run of ``directory`` (its run file, or its link).

        When that run is not created yet (its journal is pending) the directory is recorded
        and resolved when sent; a directory that belongs to no run leaves this run top-level.
        """
        run_id = read_run_file(directory)
        if run_id:
            self._append([{"kind": "parent", "run_id": run_id}])
        elif _run_info(directory) or (Path(directory) / JOURNAL_FILE).is_file():
            self._append([{"kind": "parent", "directory": str(Path(directory).resolve())}])

    def nest_in_execution(self, key: str, name: str) -> None:
        """Nest this run under the run of the pipeline execution ``key`` (found by its tag
        when sent, or created then, named ``name``)."""
        self._append([{"kind": "parent", "execution": key, "name": name}])

    def join_execution(self, key: str, name: str) -> None:
        """Record into the run of the pipeline execution ``key`` instead of a new run (the
        training of an execution); a run of its own, named ``name``, when another journal
        joined that run first."""
        self._append([{"kind": "execution", "key": key, "name": name}])

    def register(self, record: dict) -> None:
        """Record a model registration, done when sent (:func:`pipeline.tracking.registry.replay`)."""
        self._append([{**record, "kind": "register"}])

    def status(self, value: str) -> None:
        """Record the run's final status (``FINISHED`` or ``FAILED``)."""
        self._append([{"kind": "status", "value": value}])

    def records(self) -> list[dict]:
        """Every record of the journal (a torn line skipped and counted in a warning)."""
        return files.read_jsonl(self.path)

    def metric_steps(self) -> set[tuple[str, int]]:
        return {(r["key"], r["step"]) for r in self.records() if r["kind"] == "metric"}

    def _append(self, records: list[dict]) -> None:
        files.append_jsonl(self.path, records)

    def sent_count(self) -> int:
        """How many records were sent already."""
        path = self.directory / SENT_FILE
        try:
            return int(path.read_text()) if path.is_file() else 0
        except ValueError:  # written atomically, so only a hand-edited file gets here
            log.warning("%s is unreadable; every record of %s will be sent", path, self.path)
            return 0

    def pending(self) -> int:
        """How many records are not sent yet."""
        return len(self.records()) - self.sent_count()

    def send(self) -> bool:
        """Send the records not sent yet; False (with a warning) when MLflow is unreachable."""
        records = self.records()
        pending = records[self.sent_count():]
        if not pending:
            return True
        try:
            run_id = self._send(pending, records)
        except Exception as err:  # noqa: BLE001 - no tracking failure may stop a stage
            log.warning("MLflow at %s unreachable (%s: %s); %d record(s) kept in %s, send them "
                        "later with: python -m pipeline sync-mlflow%s",
                        shown_uri(self.settings), type(err).__name__, redact(str(err))[:200],
                        len(pending), self.path, self._sync_hint())
            return False
        files.write_text_atomic(self.directory / SENT_FILE, f"{len(records)}\n")
        log.info("MLflow run %s: %d record(s) sent to %s", run_id, len(pending),
                 shown_uri(self.settings))
        return True

    def _sync_hint(self) -> str:
        inside = self.directory.resolve().is_relative_to(JOURNALS_DIR.resolve())
        return "" if inside else f" --model-dir {self.directory}"

    def _send(self, pending: list[dict], records: list[dict]) -> str:
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.tracking import MlflowClient

        configure_client(self.settings)
        client = MlflowClient(tracking_uri(self.settings))
        run_id = self._run_id(client, records)
        by_kind = {kind: [r for r in pending if r["kind"] == kind]
                   for kind in ("param", "tag", "metric", "input", "artifact", "register",
                                "status")}
        for chunk in _chunks(by_kind["param"], _BATCH_PARAMS):
            client.log_batch(run_id, params=[Param(r["key"], r["value"]) for r in chunk])
        client.log_batch(run_id, tags=[RunTag(r["key"], r["value"]) for r in by_kind["tag"]])
        for chunk in _chunks(by_kind["metric"], _BATCH_METRICS):
            client.log_batch(run_id, metrics=[
                Metric(r["key"], r["value"], r["timestamp"], r["step"]) for r in chunk])
        if by_kind["input"]:
            client.log_inputs(run_id, datasets=[_dataset_input(r) for r in by_kind["input"]])
        for record in by_kind["artifact"]:
            client.log_artifact(run_id, record["path"], record["artifact_path"])
        if by_kind["register"]:
            from pipeline.tracking import registry

            for record in by_kind["register"]:
                registry.replay(self.settings, run_id, record)
        for record in by_kind["status"]:
            client.set_terminated(run_id, record["value"])
            _close_execution_run(client, run_id, record["value"])
        return run_id

    def _run_id(self, client, records: list[dict]) -> str:
        """The run recorded in the directory, or the run of the execution it joins, or a new
        one (its id written to the run file)."""
        run_id = read_run_file(self.directory)
        if run_id and _client_has_run(client, run_id):
            return run_id
        if run_id:
            log.warning("MLflow run %s is not in %s; starting a new run",
                        run_id, shown_uri(self.settings))
        experiment_id = get_experiment_id(client, self.settings.experiment)
        run_id = (self._joined_run_id(client, experiment_id, records)
                  or self._new_run_id(client, experiment_id, records))
        write_run_file(self.directory, run_id)
        return run_id

    def _new_run_id(self, client, experiment_id: str, records: list[dict]) -> str:
        parent = self._parent_run_id(client, experiment_id, records)
        run = client.create_run(experiment_id, run_name=self.stage, tags={
            **self._stage_tags(), **({PARENT_TAG: parent} if parent else {})})
        if parent:
            client.set_tag(parent, LATEST_TAG.format(stage=self.stage), run.info.run_id)
        return run.info.run_id

    def _stage_tags(self) -> dict[str, str]:
        return {STAGE_TAG: self.stage, f"{STAGE_TAG}.{self.stage}": "done"}

    def _joined_run_id(self, client, experiment_id: str, records: list[dict]) -> str | None:
        """The run of the execution this journal joins, now tagged as this stage's run; None
        when it joins none, or another journal (a second training) joined it first."""
        record = next((r for r in records if r["kind"] == "execution"), None)
        if record is None:
            return None
        run = _find_execution_run(client, experiment_id, record["key"])
        if run is None:
            return client.create_run(experiment_id, run_name=record["name"], tags={
                **self._stage_tags(), EXECUTION_TAG: record["key"]}).info.run_id
        if run.data.tags.get(STAGE_TAG) != EXECUTION_STAGE:
            return None
        for key, value in self._stage_tags().items():
            client.set_tag(run.info.run_id, key, value)
        client.update_run(run.info.run_id, status="RUNNING")  # until this stage ends it
        return run.info.run_id

    def _parent_run_id(self, client, experiment_id: str, records: list[dict]) -> str | None:
        record = next((r for r in records if r["kind"] == "parent"), None)
        if record is None:
            return None
        if "execution" in record:
            return _execution_run_id(client, experiment_id, record["execution"], record["name"])
        run_id = record.get("run_id") or _resolve_run(self.settings, Path(record["directory"]))
        if run_id and _client_has_run(client, run_id):
            return run_id
        log.warning("parent run of %s (%s) not found in %s; recording a top-level run",
                    self.stage, run_id or record.get("directory"), shown_uri(self.settings))
        return None


# --- the run of a pipeline execution ------------------------------------------------------------


def _find_execution_run(client, experiment_id: str, key: str) -> Any:
    """The run tagged with the execution ``key``, if the store has one."""
    runs = client.search_runs([experiment_id], f"tags.`{EXECUTION_TAG}` = '{key}'",
                              max_results=1)
    return runs[0] if runs else None


def _execution_run_id(client, experiment_id: str, key: str, name: str) -> str:
    """The run of the execution ``key``, created (named ``name``) by its first stage: ended
    at once, so that it never shows as running forever; each stage nested under it moves its
    end (:func:`_close_execution_run`) until a training records into it."""
    run = _find_execution_run(client, experiment_id, key)
    if run is not None:
        return run.info.run_id
    run = client.create_run(experiment_id, run_name=name,
                            tags={STAGE_TAG: EXECUTION_STAGE, EXECUTION_TAG: key})
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def _close_execution_run(client, run_id: str, status: str) -> None:
    """End the execution run ``run_id`` is nested under with ``status`` (now), unless a
    training records into it (the training ends it)."""
    parent = client.get_run(run_id).data.tags.get(PARENT_TAG)
    if parent and client.get_run(parent).data.tags.get(STAGE_TAG) == EXECUTION_STAGE:
        client.set_terminated(parent, status)


# --- the journals of stages other than train ----------------------------------------------------


def stage_journal(settings: MlflowParams, stage: str, parent: Path | None = None) -> RunJournal:
    """A fresh journal for one execution of ``stage`` (nested under ``parent``'s run if given)."""
    name = f"{time.strftime('%Y%m%dT%H%M%S')}-{stage}-{uuid.uuid4().hex[:8]}"
    journal = RunJournal(settings, JOURNALS_DIR / name, stage, copy_artifacts=True)
    if parent is not None:
        journal.parent(parent)
    return journal


def finish(journal: RunJournal, status: str = "FINISHED") -> bool:
    """Close a stage's run and send it; its journal is removed once everything is sent."""
    journal.status(status)
    return send_and_remove(journal)


def send_and_remove(journal: RunJournal) -> bool:
    """Send a stage's journal; remove it once everything is sent (False if it is kept)."""
    if not journal.send():
        return False
    shutil.rmtree(journal.directory, ignore_errors=True)
    with contextlib.suppress(OSError):  # the folder of journals goes when it is empty
        journal.directory.parent.rmdir()
    return True


def pending_journals(settings: MlflowParams) -> list[RunJournal]:
    """The stage journals under :data:`JOURNALS_DIR` not sent yet, oldest first."""
    journals = []
    for path in sorted(JOURNALS_DIR.glob(f"*/{JOURNAL_FILE}")):
        stage = path.parent.name.split("-")[1] if path.parent.name.count("-") >= 2 else "stage"
        journals.append(RunJournal(settings, path.parent, stage, copy_artifacts=True))
    return journals


def _dataset_input(record: dict) -> Any:
    from mlflow.entities import Dataset, DatasetInput, InputTag

    dataset = Dataset(record["name"], record["digest"], "local",
                      json.dumps({"uri": record["source"]}))
    return DatasetInput(dataset, [InputTag("mlflow.data.context", record["context"])])


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
