"""What produced a result: the git commit, the dataset's hash, the MLflow run, the key params.

Recorded as tags of the training run and shown at the top of the HTML report, so a page or a
run found later says which code, data and settings made it.
"""
from __future__ import annotations

import subprocess
from datetime import datetime, timezone
from pathlib import Path

import yaml

from pipeline.core import layout
from pipeline.core.params import Params
from pipeline.tracking.client import shown_uri
from pipeline.tracking.journal import read_run_file


def git_commit() -> str:
    """The repository's HEAD commit (with ``-dirty`` for uncommitted changes), or ``unknown``."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def dataset_hash(lock_file: Path, data_dir: Path) -> str:
    """The md5 DVC recorded in ``dvc.lock`` for ``data_dir`` (``unknown`` outside DVC)."""
    if not lock_file.is_file():
        return "unknown"
    stages = (yaml.safe_load(lock_file.read_text()) or {}).get("stages", {})
    for stage in stages.values():
        for out in stage.get("outs", []):
            if Path(out.get("path", "")) == Path(data_dir):
                return out.get("md5", "unknown")
    return "unknown"


def dataset_name(params: Params) -> str:
    """The dataset's name: the last folder of ``data.root`` (``raccoon``, ``sample``)."""
    return Path(params.data.root).resolve().name


def run_name(params: Params) -> str:
    """The name of the run of a pipeline execution: ``<model template> on <dataset>``."""
    return f"{params.model.name} on {dataset_name(params)}"


def report_provenance(params: Params, model_dir: Path, data_dir: Path) -> list[tuple[str, str]]:
    """``(label, value)`` rows saying what produced a report of ``model_dir`` on ``data_dir``."""
    run_id = read_run_file(model_dir)
    run = (f"training run {run_id}" if run_id else "training run not sent yet (its journal is "
           "pending: python -m pipeline sync-mlflow)")
    train = params.train
    return [
        ("model", f"{params.model.name} (template), exported to {model_dir}"),
        ("key params", f"model.image_size {params.model.image_size or 'derived (configure log)'}, "
                       f"train.batch_size {train.batch_size}, train.num_steps {train.num_steps}, "
                       f"train.learning_rate {train.learning_rate or 'template default'}, "
                       f"report.score_threshold {params.report.score_threshold}"),
        ("dataset", f"{params.data.root} ({params.data.format}) as {data_dir}, DVC md5 "
                    f"{dataset_hash(Path(layout.DVC_LOCK), data_dir)}"),
        ("git commit", git_commit()),
        ("MLflow", f"{run} in experiment {params.mlflow.experiment!r} at "
                   f"{shown_uri(params.mlflow)}; this report is a run nested under it"),
        ("date", datetime.now(timezone.utc).isoformat(timespec="seconds")),
    ]
