"""Switching `model.name` after a full run re-runs configure, train, export and report only,
through a real DVC experiment (`dvc exp run -S model.name=...`) in a git copy of the project."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from test_end_to_end import MINI_PARAMS, make_project, run

pytestmark = pytest.mark.slow

OTHER_MODEL = "ssd_mobilenet_v2_320"
GIT_ENV = {"GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
           "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com"}


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """The miniature project after a full `dvc repro`, committed to git (experiments need it)."""
    project = make_project(tmp_path_factory.mktemp("switch") / "proj", MINI_PARAMS)
    run(["git", "init", "-q"], project)
    run(["dvc", "config", "core.no_scm", "false"], project)
    (project / ".gitignore").write_text("mlflow.db\n")
    assert stages_run(run(["dvc", "repro"], project).stdout) == {
        "sample", "convert", "configure", "train", "export", "report"}
    run(["git", "add", "-A"], project)
    run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "commit", "-qm",
         "baseline"], project)
    return project


def test_switching_the_model_reruns_configure_train_export_report_only(project, monkeypatch):
    for key, value in GIT_ENV.items():
        monkeypatch.setenv(key, value)
    sample_before = (project / "data/sample").stat().st_mtime_ns
    status = json.loads(run(["dvc", "status", "--json", "configure"], project).stdout)
    assert status == {}
    result = run(["dvc", "exp", "run", "-S", f"model.name={OTHER_MODEL}"], project)
    assert stages_run(result.stdout) == {"configure", "train", "export", "report"}
    assert (project / "data/sample").stat().st_mtime_ns == sample_before
    config = (project / "models/pipeline.config").read_text()
    assert "ssd_mobilenet_v2_keras" in config and "ssd_mobilenet_v2_fpn_keras" not in config

    shown = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    names = {params_of(row).get("model", {}).get("name") for row in flatten(shown)}
    assert {"ssd_mobilenet_v2_fpnlite_cpu", OTHER_MODEL} <= names


def test_the_new_train_run_logs_the_resolved_pipeline_config(project):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("object-detection")
    runs = client.search_runs([experiment.experiment_id], "tags.`pipeline.stage` = 'train'",
                              order_by=["attributes.start_time DESC"])
    assert [r.data.tags["model.name"] for r in runs] == [OTHER_MODEL,
                                                         "ssd_mobilenet_v2_fpnlite_cpu"]
    logged = Path(client.download_artifacts(runs[0].info.run_id, "pipeline.config",
                                            str(project / "downloaded")))
    assert logged.read_text() == (project / "models/pipeline.config").read_text()


def flatten(shown) -> list[dict]:
    """Every row (baseline and experiments) of `dvc exp show --json`, whatever its nesting."""
    rows = []
    for entry in shown if isinstance(shown, list) else [shown]:
        rows.append(entry)
        for child in entry.get("experiments") or []:
            rows.extend(flatten(child.get("revs") or [child]))
    return rows


def params_of(row: dict) -> dict:
    data = (row.get("data") or {}).get("params") or {}
    return (data.get("params.yaml") or {}).get("data") or {}
