"""Stage ``train``: train through the OD API's ``model_main_tf2``, resumable and evaluated.

Training runs in segments that end at the evaluation steps (every ``train.eval_every_n`` steps
and at the config's ``num_steps``), each one ``model_main_tf2.main`` call; an interrupted run
(the model directory is a DVC ``persist`` output) continues where its last checkpoint left off;
each segment's checkpoint is evaluated on the val split and the best one copied to
``<model_dir>/best/`` (what the export stage exports); a NaN or Inf loss stops training at once.
That is :mod:`pipeline.training` (the loop, its monitor, the model directory, the curves).

This module parses the arguments, builds the loop's typed inputs
(:class:`pipeline.training.inputs.TrainingRun`), and attaches the MLflow journal
(:class:`pipeline.tracking.journal.RunJournal`) to the loop's events: the loop knows no tracker.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

from pipeline.core import compat, layout
from pipeline.core.errors import PipelineError
from pipeline.core.params import Params
from pipeline.tracking import execution
from pipeline.tracking import journal as tracking
from pipeline.tracking import provenance
from pipeline.tracking.metrics import tracked_points
from pipeline.training import budget
from pipeline.training.curves import read_scalars
from pipeline.training.inputs import TrainingRun
from pipeline.training.loop import SegmentedTraining

log = logging.getLogger(__name__)

PARAM_SECTIONS = ("sample", "data", "convert", "model", "train")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=layout.PIPELINE_CONFIG)
    parser.add_argument("--model-dir", type=Path, default=layout.MODEL_DIR)
    parser.add_argument("--data", type=Path, default=layout.RECORDS_DIR,
                        help="convert output (label map and data report are logged to MLflow)")
    parser.add_argument("--curves", type=Path, default=layout.TRAIN_CURVES)
    parser.add_argument("--eval-curves", type=Path, default=layout.EVAL_CURVES)
    parser.add_argument("--metrics", type=Path, default=layout.EVAL_METRICS)
    parser.add_argument("--progress-every", type=float, default=10.0, metavar="SECONDS",
                        help="seconds between progress lines when stderr is not a terminal "
                             "(on a terminal: a progress bar); 0 = a line, or a bar update, "
                             "every step instead of every 10")


def run(args: argparse.Namespace, params: Params) -> None:
    if not args.config.is_file():
        raise PipelineError(f"pipeline config not found: {args.config} (run configure first)")
    compat.apply()
    training = SegmentedTraining(training_run(args, params))
    training.add_callbacks(JournalCallbacks(tracking.RunJournal(params.mlflow, args.model_dir),
                                            args, params))
    training.train()


def training_run(args: argparse.Namespace, params: Params) -> TrainingRun:
    """The loop's inputs: the stage's paths, the config's schedule, the runtime train params."""
    return TrainingRun.from_config(
        args.config, params.train, model_dir=args.model_dir, data_dir=args.data,
        curves=args.curves, eval_curves=args.eval_curves, metrics=args.metrics,
        progress_every=args.progress_every, started_at=budget.process_start_time())


class JournalCallbacks:
    """The MLflow journal of the training, fed from the loop's events."""

    def __init__(self, journal: tracking.RunJournal, args: argparse.Namespace, params: Params):
        self.journal, self.args, self.params = journal, args, params

    def on_train_start(self) -> None:
        if not self.journal.records():  # a resumed run recorded its inputs already
            execution.join_execution(self.journal, self.params)  # the run of this dvc repro
            record_run_inputs(self.journal, self.args, self.params)
        self.journal.send()

    def on_fine_tune_restore(self, report: dict) -> None:
        """The restore counts as params, the whole report as an artifact."""
        self.journal.params({f"fine_tune.{key}": report[key] for key in (
            "restored_variables", "unrestored_variables", "freshly_initialised_variables")})
        self.journal.artifact(self.args.model_dir / layout.FINE_TUNE_RESTORE_FILE, "fine_tune")
        self.journal.send()

    def on_evaluation(self, step: int, metrics: dict | None) -> None:
        """Every TF event scalar so far, under readable names and without pycocotools' -1
        for empty buckets (the journal skips the points it has)."""
        self.journal.metrics([point for kind in ("train", "eval") for point in
                              tracked_points(kind, read_scalars(self.args.model_dir / kind))])
        self.journal.send()

    def on_budget_planned(self, plan: budget.Plan) -> None:
        """The plan as ``budget.*`` params, the config it trains from as an artifact."""
        self.journal.params({f"budget.{key}": value for key, value in
                             dataclasses.asdict(plan).items()})
        self.journal.artifact(self.args.model_dir / layout.BUDGET_CONFIG_FILE, "budget")
        self.journal.send()

    def on_stopped_early(self, step: int, reason: str) -> None:
        self.journal.tags({"stopped_early": "true", "stopped_early.step": str(step),
                           "stopped_early.reason": reason})
        self.journal.send()

    def on_best_checkpoint(self, step: int, folder: Path) -> None:
        tracking.link_run(self.args.model_dir, folder)  # export then logs to this run

    def on_train_end(self) -> None:
        self.journal.artifact(self.args.metrics, "eval")
        self.journal.status("FINISHED")
        self.journal.send()

    def on_train_failed(self, error: PipelineError) -> None:
        self.journal.status("FAILED")
        self.journal.send()


# --- MLflow inputs ------------------------------------------------------------------------------


def record_run_inputs(journal: tracking.RunJournal, args: argparse.Namespace,
                      params: Params) -> None:
    """Params (pipeline params and the resolved pipeline.config), tags and input artifacts."""
    journal.params({**tracking.flatten_params(params, PARAM_SECTIONS),
                    **flatten_config(args.config)})
    digest = provenance.dataset_hash(Path(layout.DVC_LOCK), args.data)
    journal.tags({"model.name": params.model.name, "git.commit": provenance.git_commit(),
                  "dataset.md5": digest, "mlflow.runName": provenance.run_name(params)})
    journal.dataset(provenance.dataset_name(params), digest, args.data, "training")
    for path in (args.config, *data_artifacts(args.data)):
        journal.artifact(path)


def data_artifacts(data_dir: Path) -> list[Path]:
    return [data_dir / name for name in (layout.LABEL_MAP, layout.DATA_REPORT_JSON,
                                          layout.DATA_REPORT_MD)]


def flatten_config(config: Path) -> dict[str, str]:
    """The pipeline.config as ``{"config.model.ssd.num_classes": "3", ...}``."""
    from google.protobuf import json_format, text_format
    from object_detection.protos import pipeline_pb2

    message = text_format.Parse(config.read_text(), pipeline_pb2.TrainEvalPipelineConfig())
    flat: dict[str, str] = {}

    def walk(value, key: str) -> None:
        if isinstance(value, dict):
            for name, item in value.items():
                walk(item, f"{key}.{name}")
        elif isinstance(value, list) and any(isinstance(v, dict) for v in value):
            for index, item in enumerate(value):
                walk(item, f"{key}.{index}")
        else:
            flat[key] = json.dumps(value) if isinstance(value, list) else str(value)

    walk(json_format.MessageToDict(message, preserving_proto_field_name=True), "config")
    return flat
