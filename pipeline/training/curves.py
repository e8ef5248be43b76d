"""The training's files for DVC: loss curves from the TF event files, the evaluation curves,
the metrics file."""
from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from pipeline.core import files
from pipeline.training import checkpoint_eval


def read_scalars(event_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the TF event files under ``event_dir``: tag -> [(step, value)] by step.

    A step written twice (a run interrupted after its last checkpoint, then resumed) keeps the
    value of the newest event file.
    """
    import tensorflow as tf

    curves: dict[str, dict[int, float]] = defaultdict(dict)
    for event in read_events(event_dir):
        for value in event.summary.value:
            number = float(tf.make_ndarray(value.tensor)) if value.HasField("tensor") else (
                value.simple_value)
            curves[value.tag][int(event.step)] = number
    return {tag: sorted(points.items()) for tag, points in curves.items()}


def read_events(event_dir: Path) -> Iterator:
    """Every event (``tf.compat.v1.Event``: step, wall_time, summary) of the TF event files
    under ``event_dir``, file by file, oldest file first."""
    import tensorflow as tf

    for path in sorted(event_dir.glob("events.out.tfevents.*")):
        yield from tf.compat.v1.train.summary_iterator(str(path))


def write_curves(curves: dict[str, list[tuple[int, float]]], path: Path) -> None:
    """One CSV row per step, one column per scalar (a DVC plot)."""
    tags = sorted(curves)
    rows: dict[int, dict[str, float]] = defaultdict(dict)
    for tag in tags:
        for step, value in curves[tag]:
            rows[step][tag.replace("/", "_")] = value
    columns = ["step", *(t.replace("/", "_") for t in tags)]
    with files.atomic_file(path) as temporary, temporary.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for step in sorted(rows):
            writer.writerow({"step": step, **rows[step]})


def write_eval_curves(history: dict[str, dict[str, float]], path: Path) -> None:
    """``step, map, map_50, map_75, mar_100, val_loss``: one row per evaluation (a DVC plot)."""
    with files.atomic_file(path) as temporary, temporary.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["step", *checkpoint_eval.METRICS])
        writer.writeheader()
        for step in sorted(history, key=int):
            writer.writerow({"step": int(step), **checkpoint_eval.summary(history[step])})


def write_metrics(history: dict[str, dict[str, float]], best: dict | None, best_metric: str,
                  final_step: int, path: Path) -> None:
    """The DVC metrics file: the best checkpoint's and the final checkpoint's val metrics."""
    best_step = best["step"] if best else None
    content = {
        "best_metric": best_metric,
        "best_step": best_step,
        "best": checkpoint_eval.summary(history.get(str(best_step), {})),
        "final_step": final_step,
        "final": checkpoint_eval.summary(history.get(str(final_step), {})),
    }
    files.write_json_atomic(path, content)
