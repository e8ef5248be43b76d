"""Stage ``pretrained``: the checkpoint to fine-tune from, copied into the project.

``model.checkpoint`` (``none``, ``zoo`` or a path) is resolved through the shared cache and
copied into ``models/pretrained``, a DVC output: ``dvc push`` / ``dvc pull`` share it and
``dvc.lock`` records its hash (pipeline/odapi/pretrained.py). ``configure`` reads it.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.core import layout
from pipeline.core.params import Params
from pipeline.odapi import checkpoints, pipeline_config, pretrained


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", type=Path, default=layout.PRETRAINED_DIR,
                        help=f"folder to write (default: {layout.PRETRAINED_DIR})")


def run(args: argparse.Namespace, params: Params) -> None:
    """Write the pretrained folder for params.model (the template's architecture checked)."""
    template = pipeline_config.load_template(params.model.name)
    pretrained.write(params.model, checkpoints.architecture_of(template), args.output)
