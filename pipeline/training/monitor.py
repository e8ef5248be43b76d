"""Progress and the NaN/Inf guard, called after training steps (training hook C).

Progress is a bar (:class:`pipeline.core.progress.Bar`: step of num_steps, loss, img/s, ETA)
when stderr is a terminal, else a progress line every ``every_seconds``. One bar lasts the
whole training: it starts at the first step observed (a resumed run starts there), and the
evaluations and the tracing at the start of each training segment do not count in its
rate or ETA.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

from pipeline.core import progress

log = logging.getLogger(__name__)


class TrainMonitor:
    """Called after training steps: shows progress, stops on a NaN or Inf loss. ``show_bar``:
    False in a process that must not draw a bar (a non-chief training worker)."""

    def __init__(self, total_steps: int, batch_size: int, every_seconds: float = 10.0,
                 show_bar: bool = True):
        self.total, self.batch_size, self.every_seconds = total_steps, batch_size, every_seconds
        self.non_finite: tuple[int, float] | None = None
        self.show_bar = show_bar
        self.bar: progress.Bar | None = None
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
        segment_start = self.first is None
        if segment_start:
            self.first = (step, now)
        steps_done, seconds = step - self.first[0], now - self.first[1]
        if self.show_bar and progress.shown():
            self.advance_bar(step, loss, images_per_second(steps_done, seconds, self.batch_size),
                             segment_start)
        elif now - self.last_log >= self.every_seconds or step == self.total:
            self.last_log = now
            log.info("%s", progress_line(step, self.total, loss, steps_done, seconds,
                                         self.batch_size))

    def advance_bar(self, step: int, loss: float, img_per_s: float | None,
                    segment_start: bool) -> None:
        """Move the bar to ``step``; a segment's first step restarts its timing (the steps
        before it were resumed, or spent tracing, or the run was evaluating)."""
        if self.bar is None:
            self.bar = progress.Bar(desc="train", unit="step", total=self.total, initial=step)
        speed = f", {img_per_s:.1f} img/s" if img_per_s is not None else ""
        self.bar.set_postfix_str(f"loss {loss:.4f}{speed}", refresh=False)
        if segment_start:
            self.bar.restart_at(step)
        else:
            self.bar.update(step - self.bar.n)

    def close(self) -> None:
        """Close the progress bar (if any): training ended or stopped."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def stop_message(self, last_good: str, config: Path, learning_rate: float | None) -> str:
        """Why training stopped and what to change; ``last_good``: the checkpoint to name,
        ``learning_rate``: the peak of ``config`` (None when unknown)."""
        step, loss = self.non_finite
        rate = f"peak learning rate {learning_rate:g}" if learning_rate is not None else (
            "the learning rate")
        return (f"training stopped: the total loss is {loss} at step {step}; nothing is exported. "
                f"Last good checkpoint: {last_good}. Usual causes: a learning rate too high for "
                f"the batch size ({rate} at batch size {self.batch_size} in {config}: lower "
                f"train.learning_rate or lengthen train.warmup_steps), degenerate boxes (zero "
                f"width or height, see the convert stage's data_report), or corrupt images")


def progress_line(step: int, total: int, loss: float, steps_done: int, seconds: float,
                  batch_size: int) -> str:
    """``step 120/800 (15%) loss 1.2345 | 33.1 img/s | ETA 4m05s``."""
    head = f"step {step}/{total} ({100 * step // total}%) loss {loss:.4f}"
    img_per_s = images_per_second(steps_done, seconds, batch_size)
    if img_per_s is None:
        return head
    eta = round((total - step) * batch_size / img_per_s)
    return f"{head} | {img_per_s:.1f} img/s | ETA {eta // 60}m{eta % 60:02d}s"


def images_per_second(steps_done: int, seconds: float, batch_size: int) -> float | None:
    """Training images per second over ``steps_done`` steps (None before any is timed)."""
    if steps_done <= 0 or seconds <= 0:
        return None
    return steps_done * batch_size / seconds
