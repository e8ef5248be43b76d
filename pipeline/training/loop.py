"""The training: ``model_main_tf2`` to ``num_steps``, each checkpoint of an evaluation step
evaluated as soon as it is saved, the best one kept, the curves and metrics files written.

On one machine (``train.num_workers`` 1, no TPU) the evaluation runs inside training, from the
checkpoint callback of training hook A, and training then goes on in the same ``train_loop``:
no restart (model building, tracing, input start-up: about 35 s here) per evaluation, and
checkpoints land on every evaluation step (model_main's interval is the gcd of
``checkpoint_every_n`` and ``eval_every_n``). With several workers, whose chief trains in
another process, or a TPU, training runs in segments instead: ``model_main_tf2`` to each
evaluation step in turn, the evaluation between them.

The loop knows no tracker (as Ultralytics' trainer): whoever runs it attaches callbacks to its
events (:data:`EVENTS`), e.g. the train stage's MLflow journal. The step of the latest
checkpoint is read from disk once, when the model directory is prepared, and then tracked from
the checkpoints training saves (training hook A reports each one).

Under a time budget (``train.time_budget_minutes``) the first segment measures the step time
and the rest trains from a copy of the config whose schedule ends when the budget does
(:mod:`pipeline.training.budget`); with ``train.early_stopping`` training stops after that many
evaluations without a better checkpoint (:mod:`pipeline.training.early_stopping`). Either way
the best checkpoint is the one exported and the curves and metrics files are written.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

from pipeline.core import compat, files, layout
from pipeline.core.errors import PipelineError
from pipeline.odapi import freezing, restore_report, training_hooks
from pipeline.training import budget, checkpoint_eval, cluster, early_stopping
from pipeline.training.curves import read_scalars, write_curves, write_eval_curves, write_metrics
from pipeline.training.inputs import TrainingRun, read_schedule, train_record_files
from pipeline.training.model_dir import (copy_best, fingerprint, latest_checkpoint, load_history,
                                         prepare_model_dir, read_best, save_history)
from pipeline.training.monitor import TrainMonitor

log = logging.getLogger(__name__)

#: The events of a training and their callbacks' arguments, in the order they happen.
EVENTS = {
    "on_train_start": "(): the model directory is ready (fresh, or resumed)",
    "on_fine_tune_restore": "(report): the checkpoint to fine-tune from was restored (counts, "
                            "checked by value; written to fine_tune_restore.json)",
    "on_checkpoint": "(step, path): training saved a checkpoint",
    "on_budget_planned": "(plan): the steps that fit train.time_budget_minutes, planned after "
                         "the first segment (a budget.Plan; not sent again on resume)",
    "on_evaluation": "(step, metrics or None): a training segment ended and was evaluated",
    "on_best_checkpoint": "(step, folder): a new best checkpoint, staged, before it is published",
    "on_stopped_early": "(step, reason): training stops before its last step (early stopping, "
                        "or a time budget spent sooner than planned)",
    "on_train_end": "(): training finished and the curves and metrics files are written",
    "on_train_failed": "(error): training stopped with a PipelineError (a NaN loss, ...)",
}

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


class StopTraining(Exception):
    """Raised by the checkpoint callback to end ``train_loop`` after an evaluation (early
    stopping, or the time budget spent); the checkpoint it evaluated is the last one."""


def checkpoint_interval(checkpoint_every_n: int, eval_every_n: int) -> int:
    """``model_main_tf2 --checkpoint_every_n`` when evaluating inside training: every
    evaluation step must be a checkpoint, every ``checkpoint_every_n``-th step still is."""
    return math.gcd(checkpoint_every_n, eval_every_n) if eval_every_n else checkpoint_every_n


def segment_ends(start: int, num_steps: int, eval_every_n: int) -> list[int]:
    """Steps after ``start`` where training pauses for an evaluation (always ``num_steps``)."""
    every = range(eval_every_n, num_steps, eval_every_n) if eval_every_n else []
    return [s for s in every if s > start] + ([num_steps] if start < num_steps else [])


class SegmentedTraining:
    """Train to ``num_steps``, evaluate each evaluation step's checkpoint (inside training, or
    between segments), keep the best checkpoint; report each event to the callbacks attached
    to it. (The name is older than in-training evaluation; kept for the callers.)"""

    def __init__(self, run: TrainingRun):
        self.run = run
        self.callbacks: dict[str, list[Callable]] = {event: [] for event in EVENTS}
        self.step = 0  # of the latest checkpoint
        self.history: dict[str, dict[str, float]] = {}
        self.can_evaluate = False
        self.due: set[int] = set()  # evaluation steps inside the running segment
        self.monitor: TrainMonitor | None = None
        self.configured = run.config  # configure's; a time budget trains from a copy
        self.started_at = run.started_at  # the time budget's clock
        self.deadline: float | None = None  # the budget's end, when planned by this process

    def add_callback(self, event: str, callback: Callable) -> None:
        """Call ``callback`` at ``event`` (one of :data:`EVENTS`)."""
        if event not in self.callbacks:
            raise ValueError(f"unknown training event {event!r}; known: {', '.join(EVENTS)}")
        self.callbacks[event].append(callback)

    def add_callbacks(self, tracker: object) -> None:
        """Attach every method of ``tracker`` named after an event (``on_evaluation``, ...)."""
        for event in EVENTS:
            if callable(getattr(tracker, event, None)):
                self.add_callback(event, getattr(tracker, event))

    def fire(self, event: str, *args) -> None:
        for callback in self.callbacks[event]:
            callback(*args)

    def train(self) -> None:
        """Prepare the model directory, train and evaluate to ``num_steps``, write the files."""
        if self.run.num_workers > 1:
            cluster.check_workers(self.run, train_record_files(self.run.config))
        enable_gpu_memory_growth()
        if self.started_at is None:
            self.started_at = time.time()
        # A folder that is not a training folder fails here, before any callback writes to it.
        self.step = prepare_model_dir(self.run.model_dir, fingerprint(self.run.config, self.run))
        self.history = load_history(self.run.model_dir)
        self.fire("on_train_start")
        try:
            self.train_segments()
            self.write_outputs()
        except PipelineError as err:
            self.fire("on_train_failed", err)
            raise
        self.fire("on_train_end")

    def train_segments(self) -> None:
        import tensorflow as tf

        run = self.run
        tf.keras.utils.set_random_seed(run.seed)
        self.can_evaluate = has_records(run.data_dir, "val")
        if not self.can_evaluate:
            log.warning("the val split is empty: no evaluation; the last checkpoint is exported")
        if run.early_stopping and not self.can_evaluate:
            log.warning("train.early_stopping is off: there is no val split to evaluate on")
        if run.tpu_name:  # the per-step callback is a tf.py_function, which TPUs cannot run
            log.warning("on a TPU there is no per-step progress and no NaN/Inf guard")
        training_hooks.observe_checkpoints(self.checkpoint_saved)
        freezing.freeze_backbone(run.freeze_backbone_steps)
        restore_report.observe_restores(self.fine_tune_restored)
        monitor = None  # made once the schedule is known (a time budget plans it first)
        try:
            if run.time_budget_minutes:
                self.follow_time_budget()
            run = self.run  # the planned schedule under a time budget
            evaluated_at = segment_ends(0, run.num_steps, run.eval_every_n)
            if self.step in evaluated_at and str(self.step) not in self.history:
                self.evaluate(self.step)  # interrupted between its checkpoint and its evaluation
            monitor = self.monitor = self.observe_steps()
            ends = segment_ends(self.step, run.num_steps, run.eval_every_n)
            if self.evaluates_in_training():
                self.due, ends = set(ends[:-1]), ends[-1:]
            for end in ends:
                if self.stopping():
                    break
                if not self.train_to(end, monitor):
                    break  # stopped after an evaluation inside training
                self.evaluate(end)
        finally:
            if monitor is not None:
                monitor.close()
            training_hooks.observe_checkpoints(None)
            restore_report.observe_restores(None)

    def evaluates_in_training(self) -> bool:
        """Whether evaluations run inside ``train_loop`` (one process trains: no workers' group,
        no TPU) rather than between segments."""
        run = self.run
        return bool(run.eval_every_n and self.can_evaluate and run.num_workers == 1
                    and not run.tpu_name)

    def observe_steps(self) -> TrainMonitor:
        """A monitor of the steps to ``run.num_steps``, called after training steps."""
        run = self.run
        monitor = TrainMonitor(run.num_steps, run.batch_size, run.progress_every)
        if not run.tpu_name:  # Python every 10 steps (any NaN/Inf at once); every step if asked
            training_hooks.observe_train_steps(monitor, every_n=1 if not run.progress_every else 10)
        return monitor

    def stopping(self) -> bool:
        """Whether training stops before its next segment: no improvement for
        ``run.early_stopping`` evaluations, or the time budget already spent."""
        reason = early_stopping.stop_reason(self.history, self.run.best_metric,
                                            self.run.early_stopping)
        if reason is None and self.deadline is not None and time.time() > self.deadline:
            reason = (f"the time budget of {self.run.time_budget_minutes:g} min is spent "
                      f"(training ran slower than measured)")
        if reason is None:
            return False
        log.info("stopping early at step %d of %d: %s", self.step, self.run.num_steps, reason)
        self.fire("on_stopped_early", self.step, reason)
        return True

    def follow_time_budget(self) -> None:
        """Train from a copy of the config whose schedule ends when the time budget does: the
        plan stored in the training folder (a resumed run), or one made now."""
        plan = budget.read_plan(self.run.model_dir)
        if plan is None:
            self.plan_time_budget()
            return
        log.info("%s (planned before this run resumed; kept)", plan.describe())
        self.run = self.budget_run()

    def budget_run(self, num_steps: int | None = None) -> TrainingRun:
        """The run training from the time budget's copy of configure's config; with
        ``num_steps``, that copy is written first, its schedule ending there."""
        copy = self.run.model_dir / layout.BUDGET_CONFIG_FILE
        if num_steps is not None:
            budget.write_schedule(self.configured, copy, num_steps)
        return dataclasses.replace(self.run, config=copy, schedule=read_schedule(copy))

    def plan_time_budget(self) -> None:
        """Time a first short segment and plan the steps that fit in the rest of the budget
        (the copy of the config re-written with them, the plan stored in the training folder)."""
        run = self.run
        timing = self.measure_first_segment()
        evaluation = budget.evaluation_seconds(
            timing, budget.count_records(layout.record_files(run.data_dir, "val")),
            run.batch_size) if self.can_evaluate else 0.0
        self.deadline = self.started_at + 60 * run.time_budget_minutes
        steps = budget.planned_steps(self.deadline - time.time(), self.step, timing, evaluation,
                                     run.eval_every_n, self.evaluates_in_training())
        plan = budget.Plan(run.time_budget_minutes, steps, timing.seconds_per_step,
                           timing.restart_seconds, evaluation,
                           budget.evaluations_between(self.step, steps, run.eval_every_n))
        self.run = self.budget_run(steps)
        budget.write_plan(run.model_dir, plan)  # last: a stored plan is a finished one
        log.info("%s", plan.describe())
        if steps == self.step:
            log.warning("the time budget of %g min leaves no time to train after the first "
                        "%d steps, which measured the step time: training ends at step %d",
                        run.time_budget_minutes, budget.MEASURE_STEPS, steps)
        self.fire("on_budget_planned", plan)

    def measure_first_segment(self) -> budget.Timing:
        """Train :data:`budget.MEASURE_STEPS` steps on a provisional schedule, timed."""
        start = self.step
        end = start + budget.MEASURE_STEPS
        self.run = self.budget_run(max(self.run.num_steps, budget.MEASURE_SCHEDULE_FACTOR * end))
        started = time.time()
        monitor = self.observe_steps()
        try:
            self.train_to(end, monitor)
        finally:
            monitor.close()  # its progress bar; training goes on with a bar of its own
        return budget.measured_timing(
            budget.step_wall_times(self.run.model_dir / layout.TRAIN_EVENTS_DIR), start,
            self.step, started, time.time())

    def fine_tune_restored(self, report: dict) -> None:
        files.write_json_atomic(self.run.model_dir / layout.FINE_TUNE_RESTORE_FILE, report)
        self.fire("on_fine_tune_restore", report)

    def checkpoint_saved(self, step: int, path: str) -> None:
        """Hook A's callback: training saved ``path``; an evaluation step's checkpoint is
        evaluated now, and training ends here when it should stop (:meth:`stopping`)."""
        self.step = step
        self.fire("on_checkpoint", step, path)
        if step in self.due:
            self.due.discard(step)
            self.evaluate(step)
            if self.stopping():
                raise StopTraining(step)
            if self.monitor is not None:
                self.monitor.begin(step)  # the evaluation's time is not training's

    def train_to(self, end: int, monitor: TrainMonitor) -> bool:
        """Train to step ``end``; False when training stopped before it (:class:`StopTraining`)."""
        run = self.run
        monitor.begin(self.step)
        every_n = (checkpoint_interval(run.checkpoint_every_n, run.eval_every_n) if self.due
                   else run.checkpoint_every_n)
        argv = model_main_argv(run.config, run.model_dir, end, every_n, run.num_workers,
                               run.tpu_name)
        try:
            if run.num_workers > 1:
                self.train_on_workers(argv, monitor)
            else:
                train_with_model_main(argv)
        except StopTraining:
            return False
        except Exception as err:
            if monitor.non_finite is None:
                raise
            raise PipelineError(monitor.stop_message(
                self.last_good_checkpoint(), run.config, run.schedule.peak_learning_rate)) from err
        return True

    def train_on_workers(self, argv: list[str], monitor: TrainMonitor) -> None:
        """Train a segment with a group of worker processes (:mod:`pipeline.training.cluster`);
        the chief saved its checkpoints in another process, so their step is read from disk."""
        non_finite = cluster.train_segment(
            argv, self.run, last_step=lambda: training_hooks.checkpoint_step(self.run.model_dir))
        step = training_hooks.checkpoint_step(self.run.model_dir)
        if step != self.step:
            self.checkpoint_saved(step, latest_checkpoint(self.run.model_dir))
        if non_finite is not None:
            monitor.non_finite = non_finite
            raise FloatingPointError(f"a worker stopped on a non-finite loss at step "
                                     f"{non_finite[0]}")

    def last_good_checkpoint(self) -> str:
        latest = latest_checkpoint(self.run.model_dir)
        return f"{latest} (step {self.step})" if latest else "none"

    def checkpoint_at(self, step: int) -> str | None:
        """The latest checkpoint when it holds ``step`` (evaluated right after it is saved)."""
        return latest_checkpoint(self.run.model_dir) if self.step == step else None

    def evaluate(self, step: int) -> None:
        checkpoint = self.checkpoint_at(step)
        metrics = None
        if self.can_evaluate and checkpoint:
            log.info("evaluating %s on the val split", checkpoint)
            metrics = checkpoint_eval.evaluate_checkpoint(
                self.run.config, checkpoint, self.run.model_dir / "eval")
            self.history[str(step)] = metrics
            save_history(self.run.model_dir, self.history)
            log.info("step %d: %s", step, checkpoint_eval.summary(metrics))
        self.update_best(step, checkpoint)
        self.fire("on_evaluation", step, metrics)

    def update_best(self, step: int, checkpoint: str | None) -> None:
        metrics = self.history.get(str(step))
        if checkpoint is None or (metrics is None and self.can_evaluate):
            return
        best = read_best(self.run.model_dir)
        best_metrics = self.history.get(str(best["step"])) if best else None
        # Without a val split the latest checkpoint is the best one known.
        if metrics is None or checkpoint_eval.is_better(self.run.best_metric, metrics,
                                                        best_metrics):
            copy_best(checkpoint, step, self.run.model_dir,
                      lambda folder: self.fire("on_best_checkpoint", step, folder))

    def write_outputs(self) -> None:
        run = self.run
        write_curves(read_scalars(run.model_dir / layout.TRAIN_EVENTS_DIR), run.curves)
        write_eval_curves(self.history, run.eval_curves)
        # The final step is the last one trained (before num_steps when stopped early).
        write_metrics(self.history, read_best(run.model_dir), run.best_metric, self.step,
                      run.metrics)


def has_records(data_dir: Path, split: str) -> bool:
    """Whether the ``split`` shards in ``data_dir`` hold at least one example."""
    import tensorflow as tf

    shards = layout.record_files(data_dir, split)
    return bool(shards) and any(True for _ in tf.data.TFRecordDataset(shards).take(1))
