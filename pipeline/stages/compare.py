"""``python -m pipeline compare``: the DVC experiments side by side, one line each.

``dvc exp show`` prints every param and metric (60 param columns before the first metric);
this prints the few that tell experiments apart: the model, the steps trained, batch size,
learning rate, dataset and the test mAP. It reads ``dvc exp show --json`` (run here, or a
saved file with ``--input``), so it shows exactly the experiments DVC knows: the workspace, the
commits and their experiments (queued or failed ones with ``-`` for what they have not produced).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from pipeline.core import layout
from pipeline.core.errors import PipelineError
from pipeline.core.params import Params

DVC_EXP_SHOW = ["dvc", "exp", "show", "--json"]
METRICS_FILE = str(layout.REPORTS_DIR / layout.METRICS_FILE)
MISSING = "-"


@dataclass(frozen=True)
class Column:
    """One printed column: a value of ``params.yaml`` or of the test metrics, by dotted key."""

    title: str
    kind: str  # "params" or "metrics", as in `dvc exp show --json`
    file: str
    key: str


COLUMNS = (
    Column("model", "params", layout.PARAMS_FILE, "model.name"),
    # The steps trained, not train.num_steps: that is 0 when derived from train.epochs, and a
    # time budget or early stopping ends training elsewhere.
    Column("steps", "metrics", str(layout.EVAL_METRICS), "final_step"),
    Column("batch", "params", layout.PARAMS_FILE, "train.batch_size"),
    Column("lr", "params", layout.PARAMS_FILE, "train.learning_rate"),
    Column("mAP", "metrics", METRICS_FILE, "map"),
    Column("mAP@.5", "metrics", METRICS_FILE, "map_50"),
    Column("data", "params", layout.PARAMS_FILE, "data.root"),  # last: the longest
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the command's options."""
    parser.add_argument("--input", type=Path, default=None,
                        help="a saved `dvc exp show --json` output, '-' for stdin "
                             "(default: run `dvc exp show --json` here)")
    parser.add_argument("--all-commits", "-A", action="store_true",
                        help="experiments of every commit, not only of HEAD (dvc exp show -A)")


def run(args: argparse.Namespace, params: Params) -> None:
    """Print the table of experiments (``params`` is not used: no params file is needed)."""
    shown = read_exp_show(args.input, args.all_commits)
    print(format_table(list(experiment_rows(shown))))


def read_exp_show(path: Path | None, all_commits: bool = False) -> list[dict]:
    """The parsed ``dvc exp show --json`` output: from ``path`` ('-' = stdin) or from DVC."""
    if path is None:
        text, source = _run_dvc_exp_show(all_commits), "`dvc exp show --json`"
    elif str(path) == "-":
        text, source = sys.stdin.read(), "stdin"
    else:
        try:
            text, source = path.read_text(encoding="utf-8"), str(path)
        except OSError as err:
            raise PipelineError(f"cannot read {path}: {err.strerror}") from err
    try:
        shown = json.loads(text)
    except json.JSONDecodeError as err:
        raise PipelineError(f"{source} is not the JSON of `dvc exp show --json`: {err}") from err
    if not isinstance(shown, list):
        raise PipelineError(f"{source} is not the JSON of `dvc exp show --json` (DVC 3): "
                            "expected a list of revisions")
    return shown


def _run_dvc_exp_show(all_commits: bool) -> str:
    command = DVC_EXP_SHOW + (["--all-commits"] if all_commits else [])
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except FileNotFoundError as err:
        raise PipelineError("`dvc` is not on PATH (install DVC, or pass --input FILE)") from err
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["no message"])[-1]
        raise PipelineError(f"`{' '.join(command)}` failed: {reason}")
    return result.stdout


def experiment_rows(shown: list[dict]) -> Iterator[list[str]]:
    """One row of cells per revision (workspace, commit, experiment) in DVC's order."""
    for name, data in _revisions(shown):
        yield [name, *(_cell(_lookup(data, column), column) for column in COLUMNS)]


def _revisions(entries: list[dict], indent: str = "", state: str = ""
               ) -> Iterator[tuple[str, dict]]:
    # Experiments are listed under their baseline commit, indented, with their state when
    # they have no results yet (queued, running, failed).
    for entry in entries:
        yield indent + _name(entry) + state, entry.get("data") or {}
        for experiment in entry.get("experiments") or []:
            executor = (experiment.get("executor") or {}).get("state")
            yield from _revisions(experiment.get("revs") or [experiment], indent + "  ",
                                  f" ({executor})" if executor not in (None, "success") else "")


def _name(entry: dict) -> str:
    """The branch or experiment name, else the short commit (``workspace`` as it is)."""
    rev = entry.get("rev") or MISSING
    return entry.get("name") or (rev[:7] if len(rev) == 40 else rev)


def _lookup(data: dict, column: Column) -> Any:
    """The value of ``column`` in a revision's data (None when absent)."""
    value: Any = ((data.get(column.kind) or {}).get(column.file) or {}).get("data")
    for part in column.key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _cell(value: Any, column: Column) -> str:
    if value is None:
        return MISSING
    if isinstance(value, float):  # metrics to 3 decimals; params as written (1e-05, 0.02)
        return f"{value:.3f}" if column.kind == "metrics" else f"{value:g}"
    return str(value)


def format_table(rows: list[list[str]]) -> str:
    """Left-aligned columns under their titles, two spaces apart."""
    table = [["experiment", *(column.title for column in COLUMNS)], *rows]
    widths = [max(len(row[k]) for row in table) for k in range(len(table[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
                     for row in table)
