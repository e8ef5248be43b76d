"""One training worker process of a multi-worker segment (started by
:mod:`pipeline.training.cluster`, never by hand):
``python -m pipeline.training.worker '<spec as JSON>'`` with ``TF_CONFIG`` set.

The spec: ``argv`` (the ``model_main_tf2`` flags), ``index`` (0 is the chief), ``seed``,
``num_steps``, ``batch_size`` and ``progress_every`` (the progress monitor), ``report`` (the
file where a NaN or Inf loss is reported). The chief logs progress; the other workers log only
warnings and errors, so the stage's log reads as with one worker.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time

from pipeline.core import compat, files, logs, redaction
from pipeline.odapi import training_hooks
from pipeline.training.cluster import NON_FINITE_EXIT
from pipeline.training.loop import enable_gpu_memory_growth, train_with_model_main
from pipeline.training.monitor import TrainMonitor


def exit_with_parent(interval: float = 1.0) -> None:
    """Exit when the coordinator dies (e.g. SIGKILL): a worker waiting for its peers in a
    collective op would otherwise wait for ever."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def main(spec_json: str) -> int:
    """Train the segment of ``spec_json``; 0 when done, :data:`NON_FINITE_EXIT` on a NaN/Inf."""
    spec = json.loads(spec_json)
    logging.basicConfig(level=logging.INFO if spec["index"] == 0 else logging.WARNING,
                        format=f"%(asctime)s worker {spec['index']} %(name)s: %(message)s",
                        force=True)
    logs.apply()
    redaction.install_log_filter()
    exit_with_parent()
    compat.apply()
    enable_gpu_memory_growth()
    import tensorflow as tf

    tf.keras.utils.set_random_seed(spec["seed"])
    monitor = TrainMonitor(spec["num_steps"], spec["batch_size"], spec["progress_every"])
    training_hooks.observe_train_steps(monitor, every_n=1 if not spec["progress_every"] else 10)
    try:
        train_with_model_main(spec["argv"])
    except Exception:
        if monitor.non_finite is None:
            raise
        files.write_json_atomic(spec["report"], {"non_finite": list(monitor.non_finite)})
        return NON_FINITE_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
