"""Progress bars: one look for every long loop (training steps, conversion, evaluation, export
verification), shown only when stderr is a terminal.

A bar (:class:`Bar`, a tqdm bar) writes to stderr: what runs, the count (of its total), the rate
in its unit, the elapsed time and the ETA. When stderr is not a terminal (a CI log, DVC piping a
stage's output to a file) there is no bar, as with tqdm's ``disable=None``: a loop that logs
progress lines keeps logging them then (it checks ``bar.disable``). While a bar is shown, the
project's log lines are written above it through ``tqdm.write`` (tqdm's logging redirect), so
that they never break it.
"""
from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterator

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

#: Seconds between two looks at a count kept elsewhere (:func:`polled`).
POLL_SECONDS = 0.5
#: A bar of known total: ``train: 45%|####    | 360/800 [03:10, ETA 03:52, 1.9step/s, loss ...]``
#: (tqdm's own format, with the remaining time named); unknown totals keep tqdm's count format.
BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}, ETA {remaining}, {rate_fmt}{postfix}]"


def shown(stream=None) -> bool:
    """Whether bars are shown: when ``stream`` (default: stderr) is a terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class Bar(tqdm):
    """A progress bar on stderr with the project's look, off when stderr is not a terminal (or
    when ``enabled`` is False: the caller cannot count). Use it as tqdm: around an iterable, or
    with :meth:`update`, and close it (or use it as a context manager)."""

    def __init__(self, iterable=None, *, desc: str, unit: str, total: int | None = None,
                 initial: int = 0, enabled: bool = True, **kwargs):
        self._redirect = contextlib.ExitStack()
        if total is None and iterable is not None:
            with contextlib.suppress(TypeError, AttributeError):  # e.g. a generator
                total = len(iterable)
        super().__init__(iterable, desc=desc, unit=unit, total=total, initial=initial,
                         file=sys.stderr, disable=not (enabled and shown()), dynamic_ncols=True,
                         bar_format=BAR_FORMAT if total is not None else None, **kwargs)
        if not self.disable:
            self._redirect.enter_context(logging_redirect_tqdm())

    def restart_at(self, n: int) -> None:
        """Show ``n`` done without counting the jump or the pause in the rate and ETA (work
        done before the bar's timing starts: a resumed training, an evaluation, tracing)."""
        self.n = n
        if self.disable:
            return
        self.last_print_n = n  # tqdm's rate counts from the last printed position and time
        self.unpause()
        self.refresh()

    def close(self) -> None:
        self._redirect.close()
        super().close()


@contextlib.contextmanager
def polled(bar: Bar, count: Callable[[], int], every: float = POLL_SECONDS) -> Iterator[Bar]:
    """While the block runs, move ``bar`` to ``count()`` every ``every`` seconds: progress of
    work that runs outside the loop (e.g. Beam's workers), which only keeps a counter."""
    if bar.disable:
        yield bar
        return
    done = threading.Event()

    def follow() -> None:
        while not done.wait(every):
            bar.update(count() - bar.n)

    watcher = threading.Thread(target=follow, daemon=True, name="progress")
    watcher.start()
    try:
        yield bar
    finally:
        done.set()
        watcher.join()
        bar.update(count() - bar.n)


def count_records(files: list[str]) -> int:
    """The records in TFRecord ``files`` (read, not parsed): the total of a bar over them.
    Imports TensorFlow (never called in the convert process)."""
    import tensorflow as tf

    count = tf.data.TFRecordDataset(files).reduce(tf.constant(0, tf.int64), lambda n, _: n + 1)
    return int(count)
