"""Progress lines and the NaN/Inf guard, called after training steps (training hook C)."""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

log = logging.getLogger(__name__)


class TrainMonitor:
    """Called after training steps: logs progress, stops on a NaN or Inf loss."""

    def __init__(self, total_steps: int, batch_size: int, every_seconds: float = 10.0):
        self.total, self.batch_size, self.every_seconds = total_steps, batch_size, every_seconds
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
    if steps_done <= 0 or seconds <= 0:
        return head
    rate = steps_done / seconds
    eta = round((total - step) / rate)
    return f"{head} | {rate * batch_size:.1f} img/s | ETA {eta // 60}m{eta % 60:02d}s"
