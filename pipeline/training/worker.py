"""One training worker process, with ``TF_CONFIG`` set.

Started by :mod:`pipeline.training.cluster` for a multi-worker segment on one machine:
``python -m pipeline.training.worker '<spec as JSON>'``. The spec: ``argv`` (the
``model_main_tf2`` flags), ``index`` (0 is the chief), ``seed``, ``num_steps``, ``batch_size``
and ``progress_every`` (the progress monitor), ``report`` (the file where a NaN or Inf loss is
reported). The chief shows progress (a bar on a terminal, else progress lines); the other
workers log only warnings and errors, so the stage's log reads as with one worker.

Started by hand on each machine of a multi-machine cluster: ``python -m
pipeline.training.worker --pipeline_config_path=... --model_dir=... --num_train_steps=...
--num_workers=N`` (``model_main_tf2``'s flags), so that every machine trains with the stack
shims and training hooks the stage applies (docs/scale-out.md#training).
"""
from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

from pipeline.core import compat, files, logs, redaction
from pipeline.core.errors import PipelineError
from pipeline.odapi import training_hooks
from pipeline.training.cluster import NON_FINITE_EXIT
from pipeline.training.inputs import read_schedule
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


def standalone_spec(flags: list[str]) -> dict:
    """The spec of a worker started by hand with ``model_main_tf2`` ``flags``: its index from
    ``TF_CONFIG``, its schedule from the pipeline config."""
    try:
        index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    except (KeyError, TypeError, ValueError):
        raise PipelineError("TF_CONFIG must be set to this worker's cluster and task, e.g. "
                            '{"cluster": {"worker": ["host-a:2222", "host-b:2222"]}, '
                            '"task": {"type": "worker", "index": 0}}') from None
    values = dict(flag[2:].split("=", 1) for flag in flags if "=" in flag)
    if "pipeline_config_path" not in values:
        raise PipelineError("--pipeline_config_path=... is required (model_main_tf2's flags)")
    compat.apply()  # before the OD API reads the config
    schedule = read_schedule(Path(values["pipeline_config_path"]))
    steps = int(values.get("num_train_steps", schedule.num_steps))
    return {"argv": ["model_main_tf2", *flags], "index": index, "seed": 0, "num_steps": steps,
            "batch_size": schedule.batch_size, "progress_every": 10.0, "report": None}


def main(args: list[str]) -> int:
    """Train the segment of ``args`` (a JSON spec, or ``model_main_tf2`` flags); 0 when done,
    :data:`NON_FINITE_EXIT` on a NaN/Inf."""
    by_hand = not args or args[0].startswith("--")
    spec = standalone_spec(args) if by_hand else json.loads(args[0])
    logging.basicConfig(level=logging.INFO if spec["index"] == 0 else logging.WARNING,
                        format=f"%(asctime)s worker {spec['index']} %(name)s: %(message)s",
                        force=True)
    logs.apply()
    redaction.install_log_filter()
    if not by_hand:
        exit_with_parent()
    compat.apply()
    enable_gpu_memory_growth()
    import tensorflow as tf

    tf.keras.utils.set_random_seed(spec["seed"])
    # Only the chief draws a progress bar (on the stage's terminal, which the workers share).
    monitor = TrainMonitor(spec["num_steps"], spec["batch_size"], spec["progress_every"],
                           show_bar=spec["index"] == 0)
    training_hooks.observe_train_steps(monitor, every_n=1 if not spec["progress_every"] else 10)
    try:
        train_with_model_main(spec["argv"])
    except Exception:
        if monitor.non_finite is None or spec["report"] is None:
            raise
        files.write_json_atomic(spec["report"], {"non_finite": list(monitor.non_finite)})
        return NON_FINITE_EXIT
    finally:
        monitor.close()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except PipelineError as err:
        sys.exit(f"error: {err}")
