"""The segmented training: ``model_main_tf2`` to each evaluation step in turn, evaluate the
checkpoint, keep the best one."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.core import compat, layout
from pipeline.core.errors import PipelineError
from pipeline.core.params import Params
from pipeline.odapi import training_hooks
from pipeline.tracking import journal as tracking
from pipeline.training import checkpoint_eval
from pipeline.training.curves import read_scalars, write_curves, write_eval_curves, write_metrics
from pipeline.training.model_dir import (checkpoint_at, copy_best, load_history, read_best,
                                         save_history)
from pipeline.training.monitor import TrainMonitor

log = logging.getLogger(__name__)


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


def segment_ends(start: int, num_steps: int, eval_every_n: int) -> list[int]:
    """Steps after ``start`` where training pauses for an evaluation (always ``num_steps``)."""
    every = range(eval_every_n, num_steps, eval_every_n) if eval_every_n else []
    return [s for s in every if s > start] + ([num_steps] if start < num_steps else [])


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


def has_records(data_dir: Path, split: str) -> bool:
    """Whether the ``split`` shards in ``data_dir`` hold at least one example."""
    import tensorflow as tf

    shards = layout.record_files(data_dir, split)
    return bool(shards) and any(True for _ in tf.data.TFRecordDataset(shards).take(1))
