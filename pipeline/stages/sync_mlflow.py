"""``python -m pipeline sync-mlflow``: send the MLflow records the stages kept locally.

Every stage journals its params, tags, metrics, artifacts and model registrations and sends
them as it goes; records it could not send (the tracking server was down) stay in its journal:
``<model_dir>/mlflow_journal.jsonl`` for train, a folder per execution under
``mlflow_journal/`` for the other stages. This command sends them to the tracking server named
by ``MLFLOW_TRACKING_URI`` or ``mlflow.tracking_uri``: the training journal first (its run is
the parent of the export and report runs and of the other stages of its ``dvc repro``),
then the stage journals, oldest first, registering the reported models. Records already sent
are not sent again.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.core import layout
from pipeline.tracking import journal as tracking
from pipeline.core.errors import PipelineError
from pipeline.core.params import Params

DEFAULT_MODEL_DIR = layout.MODEL_DIR


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the command's options."""
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="training directory holding mlflow_journal.jsonl "
                             f"(default: {DEFAULT_MODEL_DIR} if it has one)")


def run(args: argparse.Namespace, params: Params) -> None:
    """Send every pending journal; PipelineError naming what is still pending."""
    training = _training_journals(args.model_dir, params)
    uri = tracking.shown_uri(params.mlflow)
    sent = failed = 0
    for journal in training + tracking.pending_journals(params.mlflow):
        pending = journal.pending()
        if journal.send() if journal in training else tracking.send_and_remove(journal):
            sent += pending
        else:
            failed += pending
    if failed:
        raise PipelineError(f"{failed} record(s) could not be sent to {uri}; they are kept, "
                            "try again")
    print(f"{sent} record(s) sent to {uri}"
          + (f", run {tracking.read_run_file(args.model_dir)}" if args.model_dir else ""))


def _training_journals(model_dir: Path | None, params: Params) -> list[tracking.RunJournal]:
    journal = tracking.RunJournal(params.mlflow, model_dir or DEFAULT_MODEL_DIR)
    if journal.path.is_file():
        return [journal]
    if model_dir is not None:  # asked for explicitly
        raise PipelineError(f"no MLflow journal in {model_dir} ({tracking.JOURNAL_FILE})")
    return []
