"""Stage ``export``: export the trained checkpoint through ``exporter_main_v2``, then verify it.

The SavedModel is written to ``<output>.partial`` and verified against the checkpoint it was
exported from (:mod:`pipeline.odapi.export`: the same test images through both, detections
within ``export.verify_tolerance``), then moved to ``<output>``. On any mismatch the stage fails
and removes the staging directory, so a failed export never leaves a directory that looks
usable. When ``export.tflite`` lists precisions and the model is an SSD, TFLite models are
written to ``<output>/tflite/`` as well (see :mod:`pipeline.odapi.tflite`).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.core import layout
from pipeline.core.errors import PipelineError
from pipeline.core.files import staged_output
from pipeline.core.params import Params
from pipeline.tracking import journal as tracking

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the stage's command-line options."""
    parser.add_argument("--config", type=Path, default=layout.PIPELINE_CONFIG)
    parser.add_argument("--model-dir", type=Path, default=layout.MODEL_DIR / layout.BEST_DIR,
                        help="directory holding the checkpoint to export")
    parser.add_argument("--data", type=Path, default=layout.RECORDS_DIR,
                        help="convert output; test images (train images for int8 TFLite)")
    parser.add_argument("--output", type=Path, default=layout.EXPORT_DIR)


def run(args: argparse.Namespace, params: Params) -> None:
    """Export, verify, optionally convert to TFLite, then publish ``--output`` atomically."""
    from pipeline.odapi import export as odapi_export  # TensorFlow: not for --help

    if not (args.model_dir / "checkpoint").is_file():
        raise PipelineError(f"no checkpoint in {args.model_dir} (run the train stage first)")
    with staged_output(args.output, [args.config, args.model_dir, args.data]) as staging:
        # A failure leaves nothing half-made: staged_output removes the staging directory.
        summary = odapi_export.export_and_verify(args.config, args.model_dir, args.data, staging,
                                                 params.export)
        tracking.link_run(args.model_dir, staging)
    log.info("exported and verified %s: %s", args.output, summary)
    _log_to_mlflow(params, args.output, args.model_dir, summary)


def _log_to_mlflow(params: Params, output: Path, model_dir: Path, summary: dict) -> None:
    """Record an export run nested under the training run (sent now or kept for sync)."""
    journal = tracking.stage_journal(params.mlflow, "export", parent=model_dir)
    journal.params(tracking.flatten_params(params, ("export",)))
    journal.values({key: summary[key] for key in ("max_score_difference",
                                                  "max_box_difference")}, prefix="export.")
    for path in (output / layout.PIPELINE_CONFIG.name, output / layout.VERIFICATION_FILE):
        journal.artifact(path, "export")
    tracking.finish(journal)
