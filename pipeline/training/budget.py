"""The time budget (``train.time_budget_minutes``): how many steps fit, and a learning rate
schedule that ends with them.

configure renders the schedule (cosine decay to ``num_steps`` after a warmup) before anyone
knows how fast a step runs here. So the train stage measures it: a first segment of
:data:`MEASURE_STEPS` steps (inside the warmup with the default params, so the learning rate
has not started to decay) is timed from the wall times of the OD API's own step summaries (the
chief's event files, so several workers are measured the same way); the rest of the segment's
time is its start-up (model building, tracing, checkpoints), paid again by the next segment,
a fresh ``model_main_tf2`` call, and by every later one when training pauses for each
evaluation (several workers, a TPU; one process evaluates inside training, without a restart:
pipeline/training/loop.py). :func:`planned_steps` then finds the most
steps whose segments, start-ups and evaluations fit in what is left of the budget, counted from
the start of the stage's process; the final evaluation comes after the budget ("N minutes plus
one evaluation").

The plan is stored in the training folder (:data:`~pipeline.core.layout.BUDGET_PLAN_FILE`) with
a copy of the config whose total steps are the planned ones
(:data:`~pipeline.core.layout.BUDGET_CONFIG_FILE`); configure's config, a DVC output, is never
changed. A resumed run reads the plan back and trains to the same step: it never re-plans.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.core import files, layout
from pipeline.training.curves import read_events

#: Steps of the measuring segment (the step summaries come every 10 steps or fewer: hook A).
MEASURE_STEPS = 30
#: The measuring segment trains on a schedule at least this many times longer than itself, so
#: that its cosine decay has barely started when the planned schedule replaces it.
MEASURE_SCHEDULE_FACTOR = 10
#: The step summary the OD API writes after every block of steps (its wall time is what counts).
STEP_SUMMARY = "steps_per_sec"


@dataclass(frozen=True)
class Timing:
    """How long a training step and a segment's start-up take on this machine."""

    seconds_per_step: float
    restart_seconds: float  # a segment's time beyond its steps: start-up, checkpoints, exit


@dataclass(frozen=True)
class Plan:
    """The schedule planned for a time budget, and the figures it was planned from."""

    budget_minutes: float
    num_steps: int
    seconds_per_step: float
    restart_seconds: float
    evaluation_seconds: float
    evaluations: int  # during training; the final one comes after the budget

    def describe(self) -> str:
        """``time budget 7 min: 760 steps at 0.47 s/step, 2 evaluations (...)``."""
        plural = "" if self.evaluations == 1 else "s"
        return (f"time budget {self.budget_minutes:g} min: {self.num_steps} steps at "
                f"{self.seconds_per_step:.2f} s/step, {self.evaluations} evaluation{plural} "
                f"(estimated {self.evaluation_seconds:.0f} s each; {self.restart_seconds:.0f} s "
                f"to start each training segment)")


def evaluations_between(start: int, end: int, eval_every_n: int) -> int:
    """Evaluations while training from ``start`` to ``end``: at each multiple of
    ``eval_every_n`` in [start, end), ``start`` included (the measuring segment's end is still
    to be evaluated when it is one); the evaluation at ``end`` is the final one, not counted."""
    if not eval_every_n or end <= start:
        return 0
    return (end - 1) // eval_every_n - (max(start, 1) - 1) // eval_every_n


def seconds_needed(start: int, end: int, timing: Timing, evaluation_seconds: float,
                   eval_every_n: int, evaluates_in_training: bool = False) -> float:
    """Wall time to train from ``start`` to ``end``: one start-up per segment (a segment ends
    at every evaluation step unless evaluations run inside training), the steps, the
    evaluations during training."""
    if end <= start:
        return 0.0
    segmented = eval_every_n and not evaluates_in_training
    pauses = (end - 1) // eval_every_n - start // eval_every_n if segmented else 0
    return ((1 + pauses) * timing.restart_seconds + (end - start) * timing.seconds_per_step
            + evaluations_between(start, end, eval_every_n) * evaluation_seconds)


def planned_steps(seconds_left: float, start: int, timing: Timing, evaluation_seconds: float,
                  eval_every_n: int, evaluates_in_training: bool = False) -> int:
    """The last step of the longest training from ``start`` that fits in ``seconds_left``
    (``start`` itself when no step does). :func:`seconds_needed` grows with the end step, so a
    binary search finds it."""
    low = start
    high = start + int(max(seconds_left, 0.0) / timing.seconds_per_step)
    while low < high:
        middle = (low + high + 1) // 2
        if seconds_needed(start, middle, timing, evaluation_seconds, eval_every_n,
                          evaluates_in_training) <= seconds_left:
            low = middle
        else:
            high = middle - 1
    return low


def evaluation_seconds(timing: Timing, val_examples: int, batch_size: int) -> float:
    """An estimate of one evaluation: it builds the model as a segment's start-up does, then
    runs each val image forward once (no longer than training on it)."""
    return timing.restart_seconds + val_examples * timing.seconds_per_step / batch_size


def measured_timing(points: list[tuple[int, float]], start_step: int, end_step: int,
                    started_at: float, finished_at: float) -> Timing:
    """The timing of a segment that trained from ``start_step`` to ``end_step`` between the
    wall times ``started_at`` and ``finished_at``; ``points``: (step, wall time) of the step
    summaries (older runs' are ignored). The first block includes tracing, so the step time is
    taken between the first and last summaries; the rest of the segment is start-up."""
    points = sorted((step, wall) for step, wall in points
                    if wall >= started_at and start_step < step <= end_step)
    seconds = finished_at - started_at
    if len(points) >= 2 and points[-1][0] > points[0][0]:
        (first_step, first_wall), (last_step, last_wall) = points[0], points[-1]
        per_step = (last_wall - first_wall) / (last_step - first_step)
    else:  # no step summaries (a TPU, ...): as if the whole segment were steps (cautious)
        per_step = seconds / max(end_step - start_step, 1)
    per_step = max(per_step, 1e-6)
    return Timing(per_step, max(seconds - (end_step - start_step) * per_step, 0.0))


def step_wall_times(event_dir: Path) -> list[tuple[int, float]]:
    """(step, wall time) of every step summary in the training's TF event files."""
    return [(int(event.step), event.wall_time) for event in read_events(event_dir)
            if any(value.tag == STEP_SUMMARY for value in event.summary.value)]


def count_records(paths: list[str]) -> int:
    """The number of examples in the TFRecord files ``paths``."""
    import tensorflow as tf

    return sum(1 for _ in tf.data.TFRecordDataset(paths)) if paths else 0


def process_start_time() -> float:
    """When this process started (seconds since the epoch): the budget counts the stage's
    own start-up (Python, TensorFlow, the tracking run) too."""
    import psutil

    return psutil.Process().create_time()


def write_schedule(source: Path, target: Path, num_steps: int) -> None:
    """Write ``source`` to ``target`` with its schedule ending at ``num_steps``: the train
    config's steps and a cosine decay's total steps (its warmup kept, shortened if it would
    not end before them); a constant learning rate needs nothing more."""
    from google.protobuf import text_format
    from object_detection.protos import pipeline_pb2

    config = text_format.Merge(source.read_text(), pipeline_pb2.TrainEvalPipelineConfig())
    train_config = config.train_config
    train_config.num_steps = num_steps
    kind = train_config.optimizer.WhichOneof("optimizer")
    schedule = getattr(train_config.optimizer, kind).learning_rate if kind else None
    if schedule is not None and schedule.WhichOneof("learning_rate") == (
            "cosine_decay_learning_rate"):
        cosine = schedule.cosine_decay_learning_rate
        cosine.total_steps = num_steps
        cosine.warmup_steps = max(min(cosine.warmup_steps, num_steps - 1), 0)
    files.write_text_atomic(target, text_format.MessageToString(config))


def write_plan(model_dir: Path, plan: Plan) -> None:
    files.write_json_atomic(model_dir / layout.BUDGET_PLAN_FILE, dataclasses.asdict(plan),
                            indent=1)


def read_plan(model_dir: Path) -> Plan | None:
    """The plan stored in ``model_dir`` (None when training there has not planned yet)."""
    path = model_dir / layout.BUDGET_PLAN_FILE
    return Plan(**json.loads(path.read_text())) if path.is_file() else None
