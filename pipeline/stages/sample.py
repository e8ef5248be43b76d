"""CLI of stage ``sample`` (the generator itself is :mod:`pipeline.data.sample`)."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.core import layout
from pipeline.data import sample
from pipeline.tracking import execution
from pipeline.tracking import journal as tracking
from pipeline.core.params import Params

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", type=Path, default=layout.SAMPLE_DIR,
                        help="dataset root to write (default: data/sample)")


def run(args: argparse.Namespace, params: Params) -> None:
    splits = sample.generate(params.sample, args.output)
    counts = ", ".join(f"{k}={len(v)}" for k, v in splits.items())
    log.info("wrote %d images to %s (%s)", params.sample.num_images, args.output, counts)
    journal = execution.stage_journal(params, "sample")
    journal.params(tracking.flatten_params(params, ("sample",)))
    journal.values({f"images.{split}": len(names) for split, names in splits.items()})
    tracking.finish(journal)
