"""Stage ``train``: train through the OD API's ``model_main_tf2``, resumable and evaluated.

Training runs in segments that end at the evaluation steps (every ``train.eval_every_n`` steps
and at ``train.num_steps``). Each segment is one ``model_main_tf2.main`` call with its usual
flags (strategy from ``train.num_workers`` / ``train.tpu_name``); ``model_lib_v2.train_loop``
restores the latest checkpoint in the model directory, so an interrupted run (the directory is
a DVC ``persist`` output) continues where its last checkpoint left off. After each segment the
checkpoint is evaluated on the val split (COCO metrics), the best one by ``train.best_metric``
is copied to ``<model_dir>/best/`` (what the export stage exports), and the TF event scalars
are written to the DVC plots and sent to MLflow through a local journal
(:class:`pipeline.tracking.journal.RunJournal`).

A checkpoint directory written for another graph or schedule (model, classes, train config,
training data) is never restored into: ``fingerprint.json`` records what the checkpoints were
trained from, and a mismatch starts a fresh directory with a message naming what changed.
A NaN or Inf loss stops training at once (see :class:`TrainMonitor`).
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import math
import shutil
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import yaml

from pipeline.core import layout
from pipeline.training import checkpoint_eval
from pipeline.core import compat
from pipeline.core import files
from pipeline.odapi import training_hooks
from pipeline.tracking import journal as tracking
from pipeline.core.errors import PipelineError
from pipeline.core.params import Params, TrainParams

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
                        help="seconds between progress lines (0 = every step)")


def run(args: argparse.Namespace, params: Params) -> None:
    if not args.config.is_file():
        raise PipelineError(f"pipeline config not found: {args.config} (run configure first)")
    compat.apply()
    enable_gpu_memory_growth()
    prepare_model_dir(args.model_dir, fingerprint(args.config, params.train))
    journal = tracking.RunJournal(params.mlflow, args.model_dir)
    if not journal.records():
        record_run_inputs(journal, args, params)
    journal.send()
    trainer = SegmentedTraining(args, params, journal)
    try:
        trainer.run()
    except PipelineError:
        journal.status("FAILED")
        journal.send()
        raise
    journal.artifact(args.metrics, "eval")
    journal.status("FINISHED")
    journal.send()


# --- strategy -----------------------------------------------------------------------------------


def enable_gpu_memory_growth() -> None:
    """Let TensorFlow grow GPU memory as needed instead of reserving all of it (no-op on CPU)."""
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(gpu, True)


def model_main_argv(config: Path, model_dir: Path, num_steps: int, every_n: int,
                    num_workers: int = 1, tpu_name: str = "") -> list[str]:
    """``model_main_tf2`` flags; its strategy: TPU, multi-worker or MirroredStrategy (default)."""
    argv = [
        "model_main_tf2",
        f"--pipeline_config_path={config}",
        f"--model_dir={model_dir}",
        f"--num_train_steps={num_steps}",
        f"--checkpoint_every_n={every_n}",
        f"--num_workers={num_workers}",
        # Image summaries cost more than a training step on CPU; loss scalars are still written.
        "--record_summaries=false",
    ]
    if tpu_name:
        argv += ["--use_tpu=true", f"--tpu_name={tpu_name}"]
    return argv


def train_with_model_main(argv: list[str]) -> None:
    """Run ``model_main_tf2.main`` with ``argv``; the final step is always checkpointed."""
    compat.apply()
    training_hooks.save_final_checkpoint_after_train_loop()
    from absl import flags
    from object_detection import model_main_tf2

    flags.FLAGS(argv)
    model_main_tf2.main(argv)


# --- resume or start fresh ----------------------------------------------------------------------


def fingerprint(config: Path, train: TrainParams | None = None) -> dict[str, str]:
    """Hashes of what the checkpoints depend on: model graph, classes, train config, train data,
    and the train params that shape the run (seed, evaluation steps, best metric)."""
    from object_detection.utils import config_util

    configs = config_util.get_configs_from_pipeline_file(str(config))
    reader = configs["train_input_config"]
    label_map = Path(reader.label_map_path)
    train_files = sorted(p for pattern in reader.tf_record_input_reader.input_path
                         for p in Path(pattern).parent.glob(Path(pattern).name))
    parts = {
        "model": str(configs["model"]),
        "label_map": label_map.read_text() if label_map.is_file() else "",
        "train_config": str(configs["train_config"]),
        "train_data": "\n".join(f"{p.name} {p.stat().st_size}" for p in train_files),
    }
    if train is not None:
        parts["train_params"] = (f"seed={train.seed} eval_every_n={train.eval_every_n} "
                                 f"best_metric={train.best_metric}")
    return {name: hashlib.sha256(text.encode()).hexdigest()[:16] for name, text in parts.items()}


def prepare_model_dir(model_dir: Path, current: dict[str, str]) -> None:
    """Keep ``model_dir`` to resume from when its checkpoints match ``current``; else empty it
    (only a training folder or an empty one: PipelineError for a folder of other files)."""
    path = model_dir / layout.FINGERPRINT_FILE
    stored = json.loads(path.read_text()) if path.is_file() else None
    has_checkpoints = (model_dir / "checkpoint").is_file()
    if has_checkpoints and stored != current:
        changed = sorted(k for k in current if (stored or {}).get(k) != current[k])
        log.warning("%s holds checkpoints of another configuration (changed: %s): starting a "
                    "fresh training directory instead of restoring them", model_dir,
                    ", ".join(changed))
    if stored != current:
        if stored is None and not has_checkpoints:
            files.check_replaceable(model_dir)  # not a training folder: never emptied
        shutil.rmtree(model_dir, ignore_errors=True)
    elif has_checkpoints:
        log.info("resuming from %s (step %d)", model_dir, training_hooks.checkpoint_step(model_dir))
    model_dir.mkdir(parents=True, exist_ok=True)
    files.write_text_atomic(path, json.dumps(current, indent=1) + "\n")  # crash-safe


def segment_ends(start: int, num_steps: int, eval_every_n: int) -> list[int]:
    """Steps after ``start`` where training pauses for an evaluation (always ``num_steps``)."""
    every = range(eval_every_n, num_steps, eval_every_n) if eval_every_n else []
    return [s for s in every if s > start] + ([num_steps] if start < num_steps else [])


# --- the training loop --------------------------------------------------------------------------


class SegmentedTraining:
    """Train to each evaluation step in turn, evaluate, keep the best checkpoint, log."""

    def __init__(self, args: argparse.Namespace, params: Params, journal: tracking.RunJournal):
        self.args, self.params, self.journal = args, params, journal
        self.model_dir: Path = args.model_dir
        self.history = load_history(self.model_dir)
        self.can_evaluate = has_records(args.data, "val")
        if not self.can_evaluate:
            log.warning("the val split is empty: no evaluation; the last checkpoint is exported")

    def run(self) -> None:
        import tensorflow as tf

        tf.keras.utils.set_random_seed(self.params.train.seed)
        train = self.params.train
        start = training_hooks.checkpoint_step(self.model_dir)
        evaluated_at = segment_ends(0, train.num_steps, train.eval_every_n)
        if start in evaluated_at and str(start) not in self.history:
            self.evaluate(start)  # interrupted between its checkpoint and its evaluation
        monitor = TrainMonitor(train.num_steps, train.batch_size, self.model_dir,
                               self.args.progress_every)
        if train.tpu_name:  # the per-step callback is a tf.py_function, which TPUs cannot run
            log.warning("on a TPU there is no per-step progress and no NaN/Inf guard")
        else:  # Python every 10 steps (any NaN/Inf at once); every step if asked for
            training_hooks.observe_train_steps(monitor, every_n=1 if not self.args.progress_every else 10)
        for end in segment_ends(start, train.num_steps, train.eval_every_n):
            self.train_to(end, monitor)
            self.evaluate(end)
        self.write_outputs()

    def train_to(self, end: int, monitor: "TrainMonitor") -> None:
        train = self.params.train
        monitor.begin(training_hooks.checkpoint_step(self.model_dir))
        argv = model_main_argv(self.args.config, self.model_dir, end, train.checkpoint_every_n,
                               train.num_workers, train.tpu_name)
        try:
            train_with_model_main(argv)
        except Exception as err:
            if monitor.non_finite is None:
                raise
            raise PipelineError(monitor.stop_message(self.params)) from err

    def evaluate(self, step: int) -> None:
        checkpoint = checkpoint_at(self.model_dir, step)
        if self.can_evaluate and checkpoint:
            log.info("evaluating %s on the val split", checkpoint)
            metrics = checkpoint_eval.evaluate_checkpoint(
                self.args.config, checkpoint, self.model_dir / "eval")
            self.history[str(step)] = metrics
            save_history(self.model_dir, self.history)
            log.info("step %d: %s", step, checkpoint_eval.summary(metrics))
        self.update_best(step, checkpoint)
        self.log_scalars()

    def update_best(self, step: int, checkpoint: str | None) -> None:
        metrics = self.history.get(str(step))
        if checkpoint is None or (metrics is None and self.can_evaluate):
            return
        best = read_best(self.model_dir)
        best_metrics = self.history.get(str(best["step"])) if best else None
        # Without a val split the latest checkpoint is the best one known.
        if metrics is None or checkpoint_eval.is_better(self.params.train.best_metric, metrics,
                                                        best_metrics):
            copy_best(checkpoint, step, self.model_dir)

    def log_scalars(self) -> None:
        points = [(f"{kind}/{tag}", step, value)
                  for kind in ("train", "eval")
                  for tag, series in read_scalars(self.model_dir / kind).items()
                  for step, value in series]
        self.journal.metrics(points)
        self.journal.send()

    def write_outputs(self) -> None:
        write_curves(read_scalars(self.model_dir / "train"), self.args.curves)
        write_eval_curves(self.history, self.args.eval_curves)
        write_metrics(self.history, read_best(self.model_dir), self.params, self.args.metrics)


# --- progress and the NaN/Inf guard -------------------------------------------------------------


class TrainMonitor:
    """Called after every training step: logs progress, stops on a NaN or Inf loss."""

    def __init__(self, total_steps: int, batch_size: int, model_dir: Path,
                 every_seconds: float = 10.0):
        self.total, self.batch_size, self.model_dir = total_steps, batch_size, model_dir
        self.every_seconds = every_seconds
        self.non_finite: tuple[int, float] | None = None
        self.begin(0)

    def begin(self, step: int) -> None:
        """A training segment starts at ``step``."""
        self.last_step = step
        self.first: tuple[int, float] | None = None  # rates start at the first step: tracing
        self.last_log = 0.0                          # and model building are not training

    def __call__(self, step: int, loss: float) -> None:
        if not math.isfinite(loss):
            self.non_finite = (step, loss)
            raise FloatingPointError(f"non-finite loss {loss} at step {step}")
        if step <= self.last_step:
            return  # another replica reporting the same step
        self.last_step = step
        now = time.monotonic()
        if self.first is None:
            self.first = (step, now)
        if now - self.last_log >= self.every_seconds or step == self.total:
            self.last_log = now
            log.info("%s", progress_line(step, self.total, loss, step - self.first[0],
                                         now - self.first[1], self.batch_size))

    def stop_message(self, params: Params) -> str:
        step, loss = self.non_finite
        latest = _latest_checkpoint(self.model_dir)
        good = (f"{latest} (step {training_hooks.checkpoint_step(self.model_dir)})" if latest
                else "none")
        return (f"training stopped: the total loss is {loss} at step {step}; nothing is exported. "
                f"Last good checkpoint: {good}. Usual causes: a learning rate too high for the "
                f"batch size (train.learning_rate {params.train.learning_rate} at "
                f"train.batch_size {params.train.batch_size}: lower it or lengthen "
                f"train.warmup_steps), degenerate boxes (zero width or height, see the "
                f"convert stage's data_report), or corrupt images")


def progress_line(step: int, total: int, loss: float, steps_done: int, seconds: float,
                  batch_size: int) -> str:
    """``step 120/800 (15%) loss 1.2345 | 33.1 img/s | ETA 4m05s``."""
    head = f"step {step}/{total} ({100 * step // total}%) loss {loss:.4f}"
    if steps_done <= 0 or seconds <= 0:
        return head
    rate = steps_done / seconds
    eta = round((total - step) / rate)
    return f"{head} | {rate * batch_size:.1f} img/s | ETA {eta // 60}m{eta % 60:02d}s"


# --- checkpoints and evaluation history ---------------------------------------------------------


def _latest_checkpoint(model_dir: Path) -> str | None:
    import tensorflow as tf

    return tf.train.latest_checkpoint(str(model_dir))


def checkpoint_at(model_dir: Path, step: int) -> str | None:
    """The latest checkpoint when it holds ``step`` (a checkpoint is evaluated right after it)."""
    latest = _latest_checkpoint(model_dir)
    return latest if latest and training_hooks.checkpoint_step(model_dir) == step else None


def copy_best(checkpoint: str, step: int, model_dir: Path) -> None:
    """Copy ``checkpoint`` to ``<model_dir>/best/`` (with its own ``checkpoint`` state file)."""
    staging = model_dir / f"{layout.BEST_DIR}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    prefix = Path(checkpoint)
    for path in prefix.parent.glob(prefix.name + ".*"):
        shutil.copy2(path, staging / path.name)
    (staging / "checkpoint").write_text(
        f'model_checkpoint_path: "{prefix.name}"\nall_model_checkpoint_paths: "{prefix.name}"\n')
    (staging / layout.BEST_FILE).write_text(json.dumps({"step": step, "checkpoint": prefix.name}) + "\n")
    tracking.link_run(model_dir, staging)
    shutil.rmtree(model_dir / layout.BEST_DIR, ignore_errors=True)
    staging.rename(model_dir / layout.BEST_DIR)
    log.info("best checkpoint so far: step %d -> %s", step, model_dir / layout.BEST_DIR)


def read_best(model_dir: Path) -> dict | None:
    path = model_dir / layout.BEST_DIR / layout.BEST_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def load_history(model_dir: Path) -> dict[str, dict[str, float]]:
    path = model_dir / layout.EVAL_HISTORY_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def save_history(model_dir: Path, history: dict[str, dict[str, float]]) -> None:
    files.write_json_atomic(model_dir / layout.EVAL_HISTORY_FILE, history, indent=1)


def has_records(data_dir: Path, split: str) -> bool:
    """Whether the ``split`` shards in ``data_dir`` hold at least one example."""
    import tensorflow as tf

    shards = layout.record_files(data_dir, split)
    return bool(shards) and any(True for _ in tf.data.TFRecordDataset(shards).take(1))


# --- MLflow inputs ------------------------------------------------------------------------------


def record_run_inputs(journal: tracking.RunJournal, args: argparse.Namespace,
                      params: Params) -> None:
    """Params (pipeline params and the resolved pipeline.config), tags and input artifacts."""
    journal.params({**tracking.flatten_params(params, PARAM_SECTIONS),
                    **flatten_config(args.config)})
    journal.tags({"model.name": params.model.name, "git.commit": git_commit(),
                  "dataset.md5": dataset_hash(Path(layout.DVC_LOCK), args.data),
                  "mlflow.runName": "train"})
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


def git_commit() -> str:
    """The repository's HEAD commit (with ``-dirty`` for uncommitted changes), or ``unknown``."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def dataset_hash(lock_file: Path, data_dir: Path) -> str:
    """The md5 DVC recorded in ``dvc.lock`` for ``data_dir`` (``unknown`` outside DVC)."""
    if not lock_file.is_file():
        return "unknown"
    stages = (yaml.safe_load(lock_file.read_text()) or {}).get("stages", {})
    for stage in stages.values():
        for out in stage.get("outs", []):
            if Path(out.get("path", "")) == data_dir:
                return out.get("md5", "unknown")
    return "unknown"


# --- curves and metrics files -------------------------------------------------------------------


def read_scalars(event_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the TF event files under ``event_dir``: tag -> [(step, value)] by step.

    A step written twice (a run interrupted after its last checkpoint, then resumed) keeps the
    value of the newest event file.
    """
    import tensorflow as tf

    curves: dict[str, dict[int, float]] = defaultdict(dict)
    for path in sorted(event_dir.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                number = float(tf.make_ndarray(value.tensor)) if value.HasField("tensor") else (
                    value.simple_value)
                curves[value.tag][int(event.step)] = number
    return {tag: sorted(points.items()) for tag, points in curves.items()}


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


def write_eval_curves(history: dict[str, dict[str, float]], path: Path) -> None:
    """``step, map, map_50, map_75, mar_100, val_loss``: one row per evaluation (a DVC plot)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["step", *checkpoint_eval.METRICS])
        writer.writeheader()
        for step in sorted(history, key=int):
            writer.writerow({"step": int(step), **checkpoint_eval.summary(history[step])})


def write_metrics(history: dict[str, dict[str, float]], best: dict | None, params: Params,
                  path: Path) -> None:
    """The DVC metrics file: the best checkpoint's and the final checkpoint's val metrics."""
    final_step = params.train.num_steps
    best_step = best["step"] if best else None
    content = {
        "best_metric": params.train.best_metric,
        "best_step": best_step,
        "best": checkpoint_eval.summary(history.get(str(best_step), {})),
        "final_step": final_step,
        "final": checkpoint_eval.summary(history.get(str(final_step), {})),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2) + "\n")
