"""Progress and the NaN/Inf guard (pipeline/training/monitor.py)."""
import logging
import math

import pytest

from pipeline.core.params import Params, TrainParams
from pipeline.training import monitor as training_monitor


def test_monitor_stops_on_nan_and_inf_and_remembers_the_step(tmp_path):
    monitor = training_monitor.TrainMonitor(100, 4, tmp_path)
    monitor(1, 2.5)
    with pytest.raises(FloatingPointError):
        monitor(2, math.inf)
    assert monitor.non_finite == (2, math.inf)
    monitor = training_monitor.TrainMonitor(100, 4, tmp_path)
    with pytest.raises(FloatingPointError):
        monitor(7, math.nan)
    assert monitor.non_finite[0] == 7


def test_stop_message_names_step_checkpoint_and_causes(tmp_path, monkeypatch):
    monkeypatch.setattr(training_monitor, "latest_checkpoint", lambda d: f"{d}/ckpt-1")
    monkeypatch.setattr(training_monitor.training_hooks, "checkpoint_step", lambda d: 0)
    monitor = training_monitor.TrainMonitor(100, 4, tmp_path)
    monitor.non_finite = (3, math.nan)
    message = monitor.stop_message(Params(train=TrainParams(learning_rate=9.0, batch_size=4)))
    assert "loss is nan at step 3" in message
    assert f"Last good checkpoint: {tmp_path}/ckpt-1 (step 0)" in message
    assert "train.learning_rate 9.0 at train.batch_size 4" in message
    assert "degenerate boxes" in message and "nothing is exported" in message


def test_monitor_logs_progress_once_per_step_across_replicas(tmp_path, caplog):
    monitor = training_monitor.TrainMonitor(10, 4, tmp_path, every_seconds=0)
    with caplog.at_level(logging.INFO, logger="pipeline.training.monitor"):
        for step in (1, 1, 2, 2, 3):
            monitor(step, 1.0)
    assert [r.message.split(" loss")[0] for r in caplog.records] == [
        "step 1/10 (10%)", "step 2/10 (20%)", "step 3/10 (30%)"]


def test_progress_line_shows_images_per_second_and_eta():
    line = training_monitor.progress_line(120, 800, 1.23456, steps_done=100, seconds=50.0, batch_size=16)
    assert line == "step 120/800 (15%) loss 1.2346 | 32.0 img/s | ETA 5m40s"
    assert training_monitor.progress_line(1, 800, 2.0, 0, 0.0, 16) == "step 1/800 (0%) loss 2.0000"
