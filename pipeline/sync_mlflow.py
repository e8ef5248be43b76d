"""``python -m pipeline sync-mlflow``: send the MLflow records a training kept locally.

The train stage journals every param, tag, metric and artifact in
``<model_dir>/mlflow_journal.jsonl`` and sends them as it goes; records it could not send (the
tracking server was down) stay there. This command sends them to the tracking server named by
``MLFLOW_TRACKING_URI`` or ``mlflow.tracking_uri``, to the run in ``<model_dir>/mlflow_run.json``
(a new run when that run does not exist there). Records already sent are not sent again.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline import tracking
from pipeline.errors import PipelineError
from pipeline.params import Params


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", type=Path, default=Path("models/train"),
                        help="training directory holding mlflow_journal.jsonl")


def run(args: argparse.Namespace, params: Params) -> None:
    journal = tracking.RunJournal(params.mlflow, args.model_dir)
    if not journal.path.is_file():
        raise PipelineError(f"no MLflow journal in {args.model_dir} ({tracking.JOURNAL_FILE})")
    pending = len(journal.records()) - journal.sent_count()
    if not journal.send():
        raise PipelineError(f"{pending} record(s) could not be sent to "
                            f"{tracking.tracking_uri(params.mlflow)}; they are kept, try again")
    print(f"{pending} record(s) sent to {tracking.tracking_uri(params.mlflow)}, "
          f"run {tracking.read_run_file(args.model_dir)}")
