"""The connection to the MLflow tracking store: its URI, client settings and direct runs.

The lowest layer of :mod:`pipeline.tracking`: the journal and the registry build on it.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Iterator

from pipeline.core.params import MlflowParams
from pipeline.core.redaction import redact

log = logging.getLogger(__name__)

#: The experiment tag MLflow 3's UI reads to choose its view; without it an experiment may open
#: in the GenAI (traces) view. ``custom_model_development`` is its model-training view.
EXPERIMENT_KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"


def tracking_uri(settings: MlflowParams) -> str:
    """The tracking URI in effect (``MLFLOW_TRACKING_URI`` wins over params)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or settings.tracking_uri


def shown_uri(settings: MlflowParams) -> str:
    """The tracking URI as it may be printed: without credentials."""
    return redact(tracking_uri(settings))


def configure_client(settings: MlflowParams) -> None:
    """Bound MLflow's HTTP retries and timeouts (the environment still overrides them)."""
    # MLflow's telemetry would try to reach the internet on every run.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # Ending a run prints "View run at <tracking URI>", credentials included.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # By default a dead tracking server is retried 7 times with exponential backoff (minutes).
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(settings.http_max_retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(settings.http_timeout_s))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")


@contextlib.contextmanager
def start_run(settings: MlflowParams, stage: str, run_id: str | None = None) -> Iterator[Any]:
    """Start a new run tagged with ``stage``, or continue ``run_id``; yields the mlflow module.

    Only for what the journal cannot replay as records (logging a model to the registry).
    """
    configure_client(settings)
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(settings))
    mlflow.set_experiment(experiment_id=experiment_id(mlflow.MlflowClient(), settings.experiment))
    if run_id and not _client_has_run(mlflow.MlflowClient(), run_id):
        log.warning("MLflow run %s is not in %s; recording stage %s in a new run",
                    run_id, shown_uri(settings), stage)
        run_id = None
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else stage):
        mlflow.set_tag(f"pipeline.stage.{stage}", "done")
        if not run_id:
            mlflow.set_tag("pipeline.stage", stage)
        yield mlflow


def experiment_id(client: Any, name: str) -> str:
    """The id of the experiment ``name`` (created if needed), shown as a model-training
    experiment: tagged :data:`MODEL_TRAINING` unless its kind was set already."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING})
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    return experiment.experiment_id


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
