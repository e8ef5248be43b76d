"""Tracking and artifacts for a team (issue 14), for real on 127.0.0.1: the miniature pipeline
logs to a shared ``mlflow server`` on PostgreSQL (see conftest.py), the journal replays after
the server was down, a DVC remote gives a fresh clone every output, a queued sweep runs two
models.

The tests share one project and run in this order: each leaves it committed and up to date.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.core import layout
from tests.stages.test_end_to_end import (GIT_IDENTITY, MINI_PARAMS, flatten, make_project,
                                          params_of, run, stages_run)

pytestmark = pytest.mark.slow

STAGES = {"sample", "convert", "pretrained", "configure", "train", "export", "report"}
#: the stages that record an MLflow run (pretrained only copies a checkpoint)
RECORDING = STAGES - {"pretrained"}
METRICS = layout.REPORTS_DIR / layout.METRICS_FILE
#: the two cheapest templates, a few steps each, no TFLite: as small as a sweep can be
SWEEP_MODELS = ("ssd_mobilenet_v2_fpnlite_cpu", "ssd_mobilenet_v2_320")
SWEEP_STEPS = 6
SWEEP_SETTINGS = ["-S", f"train.num_steps={SWEEP_STEPS}", "-S", "export.tflite=[]"]
QUEUE_TIMEOUT_S = 1800


def set_params(project: Path, changes: dict) -> dict:
    """Update sections of the project's params.yaml; the whole params after the change."""
    path = project / layout.PARAMS_FILE
    params = yaml.safe_load(path.read_text())
    for section, values in changes.items():
        params[section].update(values)
    path.write_text(yaml.safe_dump(params))
    return params


def commit(project: Path, message: str) -> None:
    run(["git", "add", "-A"], project)
    run(["git", *GIT_IDENTITY, "commit", "-qm", message], project)


@pytest.fixture(scope="module")
def project(tmp_path_factory, mlflow_server) -> Path:
    """The miniature project after a full `dvc repro` that logged to the shared server."""
    project = make_project(tmp_path_factory.mktemp("scale_out") / "proj", MINI_PARAMS)
    set_params(project, {"mlflow": {"tracking_uri": mlflow_server.uri}})
    run(["git", "init", "-q"], project)
    run(["dvc", "config", "core.no_scm", "false"], project)
    (project / ".gitignore").write_text(f"/{layout.JOURNALS_DIR}/\n")
    assert stages_run(run(["dvc", "repro"], project).stdout) == STAGES
    commit(project, "baseline")
    return project


@pytest.fixture
def client(mlflow_server):
    from mlflow.tracking import MlflowClient

    return MlflowClient(mlflow_server.uri)


def runs_of(client, project: Path, query: str = "") -> list:
    """The runs of the project's experiment matching ``query``, newest first."""
    params = yaml.safe_load((project / layout.PARAMS_FILE).read_text())
    experiment = client.get_experiment_by_name(params["mlflow"]["experiment"])
    return client.search_runs([experiment.experiment_id], query,
                              order_by=["attributes.start_time DESC"])


def registered_model(project: Path) -> str:
    return yaml.safe_load((project / layout.PARAMS_FILE).read_text())["report"]["registered_model"]


def test_every_stage_logs_to_the_postgresql_server_artifacts_and_registry_included(
        project, mlflow_server, postgres, client, tmp_path):
    runs = runs_of(client, project)
    by_stage = {r.data.tags["pipeline.stage"]: r for r in runs}
    assert len(runs) == len(RECORDING) and set(by_stage) == RECORDING
    # The records are in PostgreSQL (no tracking file beside the project).
    count = postgres.query(mlflow_server.database, "SELECT count(*) FROM runs")[0][0]
    assert count == len(RECORDING)
    assert not list(project.glob("*.db")) and not (project / "mlruns").exists()

    train, report = by_stage["train"], by_stage["report"]
    assert "train/loss/total" in train.data.metrics
    metrics = json.loads((project / METRICS).read_text())
    assert report.data.metrics["test.map_50"] == pytest.approx(metrics["map_50"])
    # Artifacts go through the server (mlflow-artifacts:) into its destination folder, and
    # come back through it.
    assert train.info.artifact_uri.startswith("mlflow-artifacts:")
    assert list(mlflow_server.artifacts.rglob(layout.PIPELINE_CONFIG.name))
    fetched = client.download_artifacts(train.info.run_id, layout.PIPELINE_CONFIG.name,
                                        str(tmp_path))
    assert Path(fetched).read_text() == (project / layout.PIPELINE_CONFIG).read_text()

    champion = client.get_model_version_by_alias(registered_model(project), "champion")
    assert champion.run_id == report.info.run_id


def test_records_made_while_the_server_is_down_are_replayed_by_sync_mlflow(
        project, mlflow_server, client):
    reports_before = runs_of(client, project, "tags.`pipeline.stage` = 'report'")
    mlflow_server.stop()
    try:
        set_params(project, {"report": {"score_threshold": 0.3}})
        result = run(["dvc", "repro"], project)
    finally:
        mlflow_server.start()
    assert stages_run(result.stdout) == {"report"}
    assert "unreachable" in result.stdout + result.stderr
    assert (project / layout.JOURNALS_DIR).is_dir()
    assert len(runs_of(client, project, "tags.`pipeline.stage` = 'report'")) == len(reports_before)

    sync = run([sys.executable, "-m", "pipeline", "sync-mlflow"], project)
    assert f"sent to {mlflow_server.uri}" in sync.stdout
    assert not (project / layout.JOURNALS_DIR).exists()  # sent, so removed
    reports = runs_of(client, project, "tags.`pipeline.stage` = 'report'")
    assert len(reports) == len(reports_before) + 1
    replayed = reports[0]
    assert replayed.data.params["report.score_threshold"] == "0.3"
    metrics = json.loads((project / METRICS).read_text())
    assert replayed.data.metrics["test.map_50"] == pytest.approx(metrics["map_50"])
    train = runs_of(client, project, "tags.`pipeline.stage` = 'train'")[0]
    assert replayed.data.tags["mlflow.parentRunId"] == train.info.run_id
    assert client.get_run(train.info.run_id).data.tags["pipeline.latest.report"] == \
        replayed.info.run_id
    versions = client.search_model_versions(f"name = '{registered_model(project)}'")
    assert replayed.info.run_id in {v.run_id for v in versions}
    assert json.loads(run(["dvc", "status", "--json"], project).stdout) == {}
    commit(project, "report at score threshold 0.3")


def test_a_fresh_clone_pulls_every_output_from_the_dvc_remote_and_nothing_reruns(
        project, tmp_path):
    assert json.loads(run(["dvc", "status", "--json"], project).stdout) == {}
    run(["dvc", "remote", "add", "-d", "storage", str(tmp_path / "remote")], project)
    run(["dvc", "push"], project)
    commit(project, "a DVC remote")

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    run(["dvc", "pull"], clone)
    assert json.loads(run(["dvc", "status", "--json"], clone).stdout) == {}
    result = run(["dvc", "repro"], clone)
    assert "Running stage" not in result.stdout
    assert "Data and pipelines are up to date" in result.stdout
    for output in (layout.RECORDS_DIR / layout.LABEL_MAP,
                   layout.EXPORT_DIR / layout.SAVED_MODEL_DIR / "saved_model.pb",
                   layout.MODEL_DIR / layout.RUN_FILE):
        assert (clone / output).read_bytes() == (project / output).read_bytes(), output


def test_a_queued_sweep_runs_both_models_as_experiments_and_separate_mlflow_runs(
        project, client, monkeypatch):
    for var in ("AUTHOR", "COMMITTER"):  # each experiment is a commit
        monkeypatch.setenv(f"GIT_{var}_NAME", "test")
        monkeypatch.setenv(f"GIT_{var}_EMAIL", "test@example.com")
    started_ms = int(time.time() * 1000)
    for model in SWEEP_MODELS:
        run(["dvc", "exp", "run", "--queue", "-S", f"model.name={model}", *SWEEP_SETTINGS],
            project)
    try:
        run(["dvc", "queue", "start", "-j", "1"], project)
        status = wait_for_queue(project)
    finally:
        run(["dvc", "queue", "stop", "--kill"], project, check=False)
    assert status.count("Success") == len(SWEEP_MODELS), status

    rows = flatten(json.loads(run(["dvc", "exp", "show", "--json"], project).stdout))
    swept = {params_of(r)["model"]["name"]: r for r in rows
             if params_of(r).get("train", {}).get("num_steps") == SWEEP_STEPS}
    assert set(swept) == set(SWEEP_MODELS)
    for row in swept.values():
        assert isinstance(metrics_of(row)["map_50"], float)

    trained = runs_of(client, project, f"tags.`pipeline.stage` = 'train' and "
                                       f"attributes.start_time > {started_ms}")
    assert sorted(r.data.tags["model.name"] for r in trained) == sorted(SWEEP_MODELS)
    for train in trained:
        assert "train/loss/total" in train.data.metrics
        report = client.get_run(train.data.tags["pipeline.latest.report"])
        metrics = metrics_of(swept[train.data.tags["model.name"]])
        assert report.data.metrics["test.map_50"] == pytest.approx(metrics["map_50"])


def wait_for_queue(project: Path) -> str:
    """``dvc queue status`` once no experiment is queued or running (polled gently: each call
    starts DVC, which competes with the training for the two cores)."""
    deadline = time.monotonic() + QUEUE_TIMEOUT_S
    while time.monotonic() < deadline:
        time.sleep(15)
        status = run(["dvc", "queue", "status"], project).stdout
        if not any(word in status for word in ("Queued", "Running")):
            return status
    raise AssertionError(f"the queue did not finish in {QUEUE_TIMEOUT_S} s:\n{status}")


def metrics_of(row: dict) -> dict:
    """The report metrics of one row of `dvc exp show --json`."""
    data = (row.get("data") or {}).get("metrics") or {}
    return (data.get(str(METRICS)) or {}).get("data") or {}
