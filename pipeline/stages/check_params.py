"""``python -m pipeline check-params``: validate params.yaml and do nothing else.

Run it before ``dvc repro`` (by hand or in CI): DVC parses params.yaml itself, with no size or
alias limit, before any stage (and so before this project's loader) runs; see README, Parameters.
"""
from __future__ import annotations

import argparse

from pipeline.core.params import Params


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options besides ``--params``: the CLI loads and validates the file first."""


def run(args: argparse.Namespace, params: Params) -> None:
    """Reached only when the file is valid (the CLI has loaded it)."""
    print(f"{args.params}: valid")
