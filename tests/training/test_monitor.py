"""Progress and the NaN/Inf guard (pipeline/training/monitor.py)."""
import logging
import math

import pytest

from pipeline.core import progress
from pipeline.training import monitor as training_monitor


def test_monitor_stops_on_nan_and_inf_and_remembers_the_step():
    monitor = training_monitor.TrainMonitor(100, 4)
    monitor(1, 2.5)
    with pytest.raises(FloatingPointError):
        monitor(2, math.inf)
    assert monitor.non_finite == (2, math.inf)
    monitor = training_monitor.TrainMonitor(100, 4)
    with pytest.raises(FloatingPointError):
        monitor(7, math.nan)
    assert monitor.non_finite[0] == 7


def test_stop_message_names_step_checkpoint_and_the_config_it_trained(tmp_path):
    monitor = training_monitor.TrainMonitor(100, 4)
    monitor.non_finite = (3, math.nan)
    message = monitor.stop_message(f"{tmp_path}/ckpt-1 (step 0)", tmp_path / "p.config", 9.0)
    assert "loss is nan at step 3" in message
    assert f"Last good checkpoint: {tmp_path}/ckpt-1 (step 0)" in message
    assert f"peak learning rate 9 at batch size 4 in {tmp_path / 'p.config'}" in message
    assert "degenerate boxes" in message and "nothing is exported" in message
    assert "(the learning rate at batch size 4" in monitor.stop_message("none", tmp_path, None)


def test_monitor_logs_progress_once_per_step_across_replicas(caplog):
    monitor = training_monitor.TrainMonitor(10, 4, every_seconds=0)
    with caplog.at_level(logging.INFO, logger="pipeline.training.monitor"):
        for step in (1, 1, 2, 2, 3):
            monitor(step, 1.0)
    assert [r.message.split(" loss")[0] for r in caplog.records] == [
        "step 1/10 (10%)", "step 2/10 (20%)", "step 3/10 (30%)"]
    assert monitor.bar is None  # stderr is not a terminal: lines, no bar


def test_on_a_terminal_a_bar_starts_at_the_resumed_step_and_shows_the_loss(monkeypatch, caplog):
    monkeypatch.setattr(progress, "shown", lambda stream=None: True)
    ticks = iter(range(0, 1000, 5))  # the monitor's clock: 5 s between two calls
    monkeypatch.setattr(training_monitor.time, "monotonic", lambda: next(ticks))
    monitor = training_monitor.TrainMonitor(800, 4, every_seconds=0)
    monitor.begin(500)  # resumed from the checkpoint of step 500
    with caplog.at_level(logging.INFO, logger="pipeline.training.monitor"):
        monitor(510, 1.5)
        monitor(520, 1.25)
        bar = monitor.bar
        assert (bar.initial, bar.n, bar.total) == (510, 520, 800)
        assert bar.postfix == "loss 1.2500, 8.0 img/s"  # 10 steps of 4 images in 5 s
        assert "520/800" in str(bar) and "ETA" in str(bar)
        monitor.begin(600)  # the next segment, after an evaluation
        monitor(610, 1.0)
        monitor(620, 0.75)
        assert (bar.n, bar.postfix) == (620, "loss 0.7500, 8.0 img/s")
    assert caplog.records == []  # the bar replaces the progress lines
    monitor.close()
    assert monitor.bar is None


def test_a_worker_that_is_not_the_chief_draws_no_bar(monkeypatch):
    monkeypatch.setattr(progress, "shown", lambda stream=None: True)
    monitor = training_monitor.TrainMonitor(800, 4, show_bar=False)
    monitor(10, 1.0)
    assert monitor.bar is None


def test_progress_line_shows_images_per_second_and_eta():
    line = training_monitor.progress_line(120, 800, 1.23456, steps_done=100, seconds=50.0,
                                          batch_size=16)
    assert line == "step 120/800 (15%) loss 1.2346 | 32.0 img/s | ETA 5m40s"
    assert training_monitor.progress_line(1, 800, 2.0, 0, 0.0, 16) == "step 1/800 (0%) loss 2.0000"
