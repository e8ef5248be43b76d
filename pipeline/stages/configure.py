"""Stage ``configure``: render ``pipeline.config`` from a template in ``configs/`` and params.

The stage reads its arguments, renders and writes the config (pipeline/odapi/pipeline_config.py
knows templates and config editing) and records both in MLflow. Before training starts, it
shows the values derived from the data report (pipeline/odapi/data_defaults.py), one log line
each, and records them in its MLflow run as ``derived.<key>`` and ``derived.<key>.why``.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.core import layout
from pipeline.core.params import Params
from pipeline.odapi import pipeline_config
from pipeline.tracking import execution
from pipeline.tracking import journal as tracking

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=layout.RECORDS_DIR,
                        help="convert output: shards, label_map.pbtxt, data_report.json")
    parser.add_argument("--output", type=Path, default=layout.PIPELINE_CONFIG,
                        help="pipeline.config to write (default: models/pipeline.config)")
    parser.add_argument("--pretrained", type=Path, default=layout.PRETRAINED_DIR,
                        help="the pretrained stage's folder: the checkpoint to fine-tune from "
                             f"(default: {layout.PRETRAINED_DIR}; when absent, model.checkpoint "
                             "is resolved here)")


def run(args: argparse.Namespace, params: Params) -> None:
    """Render the template for params.model with params.train, write it, record it."""
    config, defaults = pipeline_config.render_with_defaults(params.model, params.train, args.data,
                                                            args.pretrained)
    for line in defaults.lines():
        log.info("%s", line)
    pipeline_config.write_config(config, args.output)
    log.info("wrote %s (%s, %d classes, peak learning rate %g)", args.output, params.model.name,
             pipeline_config.num_classes(config),
             pipeline_config.peak_learning_rate(params.model, params.train))
    journal = execution.stage_journal(params, "configure")
    journal.params({**tracking.flatten_params(params, ("model", "train")),
                    **pipeline_config.resolved_values(config, params.model, params.train),
                    **defaults.mlflow_params()})
    journal.artifact(args.output)
    tracking.finish(journal)
