"""Stage ``train``: train through the OD API's ``model_main_tf2``.

``model_main_tf2.main`` runs with its own flags in this process, after the stack's
compatibility shims (:mod:`pipeline.compat`) are applied, including the one that always
checkpoints the final step. Afterwards the TF event scalars (losses, learning rate, steps/s)
are written to ``--curves`` (a DVC plot) and logged to MLflow with their steps.
"""
from __future__ import annotations

import argparse
import csv
import logging
from collections import defaultdict
from pathlib import Path

from pipeline import compat, tracking
from pipeline.errors import PipelineError
from pipeline.params import Params

log = logging.getLogger(__name__)

PARAM_SECTIONS = ("sample", "data", "convert", "model", "train")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=Path("models/pipeline.config"))
    parser.add_argument("--model-dir", type=Path, default=Path("models/train"))
    parser.add_argument("--data", type=Path, default=Path("data/tfrecords"),
                        help="convert output (label map and data report are logged to MLflow)")
    parser.add_argument("--curves", type=Path, default=Path("reports/train_curves.csv"))


def run(args: argparse.Namespace, params: Params) -> None:
    if not args.config.is_file():
        raise PipelineError(f"pipeline config not found: {args.config} (run configure first)")
    args.model_dir.mkdir(parents=True, exist_ok=True)
    with tracking.start_run(params.mlflow, "train") as mlflow:
        tracking.write_run_file(args.model_dir, mlflow.active_run().info.run_id)
        mlflow.set_tag("model.name", params.model.name)
        mlflow.log_params(tracking.flatten_params(params, PARAM_SECTIONS))
        tracking.log_existing_artifacts(mlflow, [args.config, *data_artifacts(args.data)])
        train_with_model_main(args.config, args.model_dir, params.train.num_steps,
                              params.train.checkpoint_every_n, params.train.seed)
        curves = read_scalars(args.model_dir / "train")
        write_curves(curves, args.curves)
        for tag, points in curves.items():
            for step, value in points:
                mlflow.log_metric(tracking.metric_name(f"train/{tag}"), value, step=step)


def data_artifacts(data_dir: Path) -> list[Path]:
    return [data_dir / name for name in ("label_map.pbtxt", "data_report.json", "data_report.md")]


def train_with_model_main(config: Path, model_dir: Path, num_steps: int, every_n: int,
                          seed: int = 0) -> None:
    """Run ``model_main_tf2.main`` with its flags; the final step is always checkpointed."""
    compat.apply()
    compat.save_final_checkpoint_after_train_loop()
    import tensorflow as tf
    from absl import flags
    from object_detection import model_main_tf2

    # Seeds Python, NumPy and TF: weight init and shuffling repeat (threads may still reorder).
    tf.keras.utils.set_random_seed(seed)

    argv = [
        "model_main_tf2",
        f"--pipeline_config_path={config}",
        f"--model_dir={model_dir}",
        f"--num_train_steps={num_steps}",
        f"--checkpoint_every_n={every_n}",
        # Image summaries cost more than a training step on CPU; loss scalars are still written.
        "--record_summaries=false",
    ]
    flags.FLAGS(argv)
    model_main_tf2.main(argv)


def read_scalars(event_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar written to the TF event files under ``event_dir``: tag -> [(step, value)]."""
    import tensorflow as tf

    curves: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for path in sorted(event_dir.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                number = float(tf.make_ndarray(value.tensor)) if value.HasField("tensor") else (
                    value.simple_value)
                curves[value.tag].append((int(event.step), number))
    return dict(curves)


def write_curves(curves: dict[str, list[tuple[int, float]]], path: Path) -> None:
    """One CSV row per step, one column per scalar (a DVC plot)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tags = sorted(curves)
    rows: dict[int, dict[str, float]] = defaultdict(dict)
    for tag in tags:
        for step, value in curves[tag]:
            rows[step][tag.replace("/", "_")] = value
    columns = ["step", *(t.replace("/", "_") for t in tags)]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for step in sorted(rows):
            writer.writerow({"step": step, **rows[step]})
