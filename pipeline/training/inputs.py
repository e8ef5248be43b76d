"""What one training run needs, typed: the training loop takes a :class:`TrainingRun`, never
argparse's ``Namespace`` or the whole params.

The schedule (number of steps, batch size, peak learning rate) is read from the pipeline.config
being trained, because that is what the OD API trains: params reach training only through the
configure stage, which writes them into that config. The train params that are not in the
config (checkpoint and evaluation intervals, best metric, seed, strategy, how many steps the
backbone stays frozen, time budget, early stopping) are copied in. Under a time budget the loop
replaces the config and schedule by the planned ones (:mod:`pipeline.training.budget`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import PipelineError
from pipeline.core.params import TrainParams


@dataclass(frozen=True)
class Schedule:
    """The training schedule of a pipeline.config (its ``train_config``)."""

    num_steps: int
    batch_size: int
    peak_learning_rate: float | None  # None for a schedule this project does not render


@dataclass(frozen=True, kw_only=True)
class TrainingRun:
    """The inputs and outputs of one training, and how it runs."""

    config: Path
    model_dir: Path
    data_dir: Path
    curves: Path
    eval_curves: Path
    metrics: Path
    schedule: Schedule
    checkpoint_every_n: int
    eval_every_n: int
    best_metric: str
    seed: int
    num_workers: int = 1
    tpu_name: str = ""
    freeze_backbone_steps: int = 0  # -1 = throughout, 0 = never, K = the first K steps
    progress_every: float = 10.0  # seconds between progress lines (0: every step)
    time_budget_minutes: float = 0.0  # 0: train to num_steps; else plan the steps that fit
    early_stopping: int = 0  # evaluations without improvement before stopping (0: never)
    started_at: float | None = None  # when the budget's clock started (None: when training does)

    @property
    def num_steps(self) -> int:
        return self.schedule.num_steps

    @property
    def batch_size(self) -> int:
        return self.schedule.batch_size

    @classmethod
    def from_config(cls, config: Path, train: TrainParams, **paths_and_options) -> TrainingRun:
        """The run of ``config`` (schedule read from it) with the runtime ``train`` params;
        ``paths_and_options``: the other fields (``model_dir``, ``data_dir``, ...)."""
        return cls(config=config, schedule=read_schedule(config),
                   checkpoint_every_n=train.checkpoint_every_n, eval_every_n=train.eval_every_n,
                   best_metric=train.best_metric, seed=train.seed,
                   num_workers=train.num_workers, tpu_name=train.tpu_name,
                   freeze_backbone_steps=train.freeze_backbone_steps,
                   time_budget_minutes=train.time_budget_minutes,
                   early_stopping=train.early_stopping, **paths_and_options)


def read_schedule(config: Path) -> Schedule:
    """The number of steps, batch size and peak learning rate ``config`` trains with."""
    from object_detection.utils import config_util

    train_config = config_util.get_configs_from_pipeline_file(str(config))["train_config"]
    if train_config.num_steps <= 0:  # 0 is the OD API's "train for ever"
        raise PipelineError(f"{config}: train_config.num_steps is {train_config.num_steps}; "
                            "training needs a positive number of steps (run configure)")
    return Schedule(num_steps=train_config.num_steps, batch_size=train_config.batch_size,
                    peak_learning_rate=peak_learning_rate(train_config.optimizer))


def train_record_files(config: Path, reader=None) -> list[Path]:
    """The record files ``config`` trains on (its ``train_input_reader`` globs), sorted;
    ``reader``: that reader, when the caller has the configs already."""
    if reader is None:
        from object_detection.utils import config_util

        reader = config_util.get_configs_from_pipeline_file(str(config))["train_input_config"]
    return sorted(path for pattern in reader.tf_record_input_reader.input_path
                  for path in Path(pattern).parent.glob(Path(pattern).name))


def peak_learning_rate(optimizer) -> float | None:
    """The peak of the schedules configure renders (cosine decay, constant); None otherwise."""
    kind = optimizer.WhichOneof("optimizer")
    schedule = getattr(optimizer, kind).learning_rate if kind else None
    which = schedule.WhichOneof("learning_rate") if schedule is not None else None
    if which == "cosine_decay_learning_rate":
        return schedule.cosine_decay_learning_rate.learning_rate_base
    if which == "constant_learning_rate":
        return schedule.constant_learning_rate.learning_rate
    return None
