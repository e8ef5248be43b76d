"""pipeline.core.progress: one look for every bar, shown only on a terminal, log lines above it."""
import io
import logging
import time

import pytest

from pipeline.core import progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def terminal(monkeypatch):
    """Bars are shown (pytest's stderr is not a terminal)."""
    monkeypatch.setattr(progress, "shown", lambda stream=None: True)


def test_bars_are_shown_only_when_stderr_is_a_terminal(monkeypatch, tmp_path):
    assert progress.shown(Terminal())
    assert not progress.shown(io.StringIO())  # a CI log, DVC piping a stage's output
    with open(tmp_path / "log", "w") as closed:
        assert not progress.shown(closed)
    assert not progress.shown(closed)  # closed: isatty raises
    assert not progress.shown(object())  # no isatty at all
    monkeypatch.setattr("sys.stderr", io.StringIO())
    with progress.Bar(range(3), desc="report", unit="img") as bar:
        assert bar.disable and list(bar) == [0, 1, 2]
    monkeypatch.setattr("sys.stderr", Terminal())
    with progress.Bar(range(3), desc="report", unit="img") as bar:
        assert not bar.disable
    with progress.Bar(range(3), desc="report", unit="img", enabled=False) as bar:
        assert bar.disable  # the caller cannot count (e.g. Beam workers in other processes)


def test_every_bar_has_its_description_unit_count_and_eta(terminal, capsys):
    with progress.Bar(["a", "b", "c"], desc="verify: SavedModel", unit="img") as bar:
        for _ in bar:
            pass
        assert bar.total == 3  # taken from the sequence
    err = capsys.readouterr().err
    assert "verify: SavedModel: 100%" in err and "3/3 [" in err
    assert "ETA " in err and "img/s" in err


def test_log_lines_are_written_above_a_shown_bar_not_into_it(terminal, capsys):
    root = logging.getLogger()
    handler = logging.StreamHandler()  # to sys.stderr (pytest's capture), as the CLI's
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(handler)
    try:
        with progress.Bar(desc="train", unit="step", total=10) as bar:
            bar.update(4)
            logging.getLogger("pipeline.test").warning("evaluating ckpt-4")
            assert handler not in root.handlers  # redirected while the bar is shown
        assert handler in root.handlers
    finally:
        root.removeHandler(handler)
    lines = [line.rsplit("\r", 1)[-1] for line in capsys.readouterr().err.split("\n")]
    assert "evaluating ckpt-4" in lines  # a line of its own, not appended to the bar's


def test_polled_moves_the_bar_to_a_counter_kept_elsewhere(terminal):
    counted = [0]
    with progress.Bar(desc="convert", unit="img", total=5) as bar, \
            progress.polled(bar, lambda: counted[0], every=0.01):
        for _ in range(3):
            counted[0] += 1
            time.sleep(0.03)
        seen_while_running = bar.n
        counted[0] = 5
    assert seen_while_running >= 2 and bar.n == 5


def test_restart_at_shows_the_step_without_counting_the_jump_or_the_pause_in_the_rate(terminal):
    clock = [0.0]
    with progress.Bar(desc="train", unit="step", total=1000, initial=100, mininterval=0) as bar:
        bar._time = lambda: clock[0]  # tqdm's clock, so that the test decides the durations
        bar.start_t = bar.last_print_t = 0.0
        clock[0] = 100.0  # 100 s of evaluation (or tracing) ...
        bar.restart_at(500)  # ... then the next segment's first step: 400 steps later
        assert bar.n == 500
        clock[0] = 110.0
        bar.update(10)
        assert bar.format_dict["rate"] == pytest.approx(1.0)  # 10 steps in 10 s, nothing else
        assert bar.format_dict["elapsed"] == pytest.approx(10.0)
