"""Multi-worker training on one machine: each training segment runs in ``train.num_workers``
processes of ``model_main_tf2`` (MultiWorkerMirroredStrategy), a cluster on 127.0.0.1.

The stage's process stays the coordinator (segments, evaluation, best checkpoint, curves: the
same loop as with one worker) and trains each segment with a group of fresh worker processes
(:mod:`pipeline.training.worker`), because a MultiWorkerMirroredStrategy must be created before
a process runs any TensorFlow op and only once. Each worker gets its ``TF_CONFIG``; worker 0 is
the chief and writes the checkpoints and summaries into the model directory, the others write
into the OD API's ``temp_worker_NNN`` folders, which are removed after every segment.

A worker that dies (SIGKILL, out of memory, a port taken) leaves the others waiting for it in
a collective op for ever, so the whole group is stopped and started again on new ports; it
restores the chief's last checkpoint, as a resumed run does. A worker that saw a NaN or Inf
loss reports it in a file; the group is stopped and the loop fails as with one worker.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.core import layout
from pipeline.core.errors import PipelineError
from pipeline.training.inputs import TrainingRun

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
#: group restarts within one segment before the stage gives up
MAX_RESTARTS = 3
#: exit code of a worker that stopped on a NaN or Inf loss (its report file says where)
NON_FINITE_EXIT = 3
POLL_SECONDS = 0.5


def check_workers(run: TrainingRun, train_shards: list[Path]) -> None:
    """Refuse a run its workers cannot share: each worker reads whole shards, and the batch
    is split evenly across workers."""
    workers = run.num_workers
    if len(train_shards) < workers:
        raise PipelineError(
            f"train.num_workers is {workers} but the train split has {len(train_shards)} "
            f"record shard(s) ({run.config}: train_input_reader): each worker reads whole "
            f"shards, so a worker would run out of data; set convert.num_shards to at least "
            f"{workers} (or lower train.num_workers)")
    if run.batch_size % workers:
        raise PipelineError(
            f"train.batch_size {run.batch_size} is not a multiple of train.num_workers "
            f"{workers}: each worker trains an equal part of the batch")


def free_ports(count: int) -> list[int]:
    """``count`` TCP ports free on :data:`HOST` now (a port taken before a worker binds it
    fails that worker, and the group restarts on new ports)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def tf_config(ports: list[int], index: int) -> str:
    """The ``TF_CONFIG`` of worker ``index`` in a cluster of workers on :data:`HOST`."""
    return json.dumps({"cluster": {"worker": [f"{HOST}:{port}" for port in ports]},
                       "task": {"type": "worker", "index": index}})


def worker_command(spec: dict) -> list[str]:
    """The command of one worker process (``spec``: see :mod:`pipeline.training.worker`)."""
    return [sys.executable, "-m", "pipeline.training.worker", json.dumps(spec)]


def clean_worker_files(model_dir: Path) -> None:
    """Remove the non-chief workers' checkpoint and summary folders (the OD API removes them
    when train_loop returns, but not after a crash, and the final-step save writes one again)."""
    for folder in [*model_dir.glob(layout.WORKER_TEMP_GLOB),
                   *model_dir.glob(f"*/{layout.WORKER_TEMP_GLOB}")]:
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class GroupResult:
    """How a worker group ended: all finished, one stopped on a non-finite loss, or one died."""

    failed: int | None = None  # index of the first worker that failed
    returncode: int = 0
    non_finite: tuple[int, float] | None = None

    def describe(self) -> str:
        code = self.returncode
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        return f"worker {self.failed} ended with {how}"


class WorkerGroup:
    """The worker processes of one training segment."""

    def __init__(self, specs: list[dict], command: Callable[[dict], list[str]]):
        ports = free_ports(len(specs))
        package_root = str(Path(__file__).resolve().parents[2])  # `-m pipeline...` from any cwd
        path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
        self.processes: list[subprocess.Popen] = []
        for index, spec in enumerate(specs):
            env = {**os.environ, "TF_CONFIG": tf_config(ports, index), "PYTHONPATH": path}
            self.processes.append(subprocess.Popen(command(spec), env=env))
            log.info("started training worker %d of %d (pid %d, %s:%d)", index, len(specs),
                     self.processes[-1].pid, HOST, ports[index])

    def wait(self) -> tuple[int, int] | None:
        """Wait until every worker finished (None) or one failed: (its index, return code)."""
        while True:
            codes = [process.poll() for process in self.processes]
            failed = [i for i, code in enumerate(codes) if code not in (None, 0)]
            if failed:
                return failed[0], codes[failed[0]]
            if all(code == 0 for code in codes):
                return None
            time.sleep(POLL_SECONDS)

    def stop(self) -> None:
        """Kill the workers still running (they wait for a dead peer and hold nothing to save:
        the chief's checkpoint state file is only replaced once a checkpoint is complete)."""
        for process in self.processes:
            if process.poll() is None:
                process.kill()
        for process in self.processes:
            process.wait()


def run_group(specs: list[dict], command: Callable[[dict], list[str]]) -> GroupResult:
    """Start the workers of ``specs``, wait for them, stop them all when one fails."""
    group = WorkerGroup(specs, command)
    try:
        failure = group.wait()
    finally:
        group.stop()
    if failure is None:
        return GroupResult()
    result = GroupResult(failed=failure[0], returncode=failure[1])
    for spec in specs:
        report = Path(spec["report"])
        if report.is_file():
            result.non_finite = tuple(json.loads(report.read_text())["non_finite"])
    return result


def worker_specs(argv: list[str], run: TrainingRun, reports: Path) -> list[dict]:
    """What each worker process is told: the ``model_main_tf2`` flags and its monitor."""
    return [{"argv": argv, "index": index, "seed": run.seed, "num_steps": run.num_steps,
             "batch_size": run.batch_size, "progress_every": run.progress_every,
             "report": str(reports / f"worker-{index}.json")}
            for index in range(run.num_workers)]


def train_segment(argv: list[str], run: TrainingRun,
                  command: Callable[[dict], list[str]] = worker_command,
                  last_step: Callable[[], int] = lambda: 0) -> tuple[int, float] | None:
    """Train one segment (``model_main_tf2`` ``argv``) on ``run.num_workers`` workers;
    restart the whole group when a worker dies. Returns ``(step, loss)`` when a worker saw a
    non-finite loss, else None. ``last_step()``: the chief's latest checkpoint step (logged)."""
    for attempt in range(MAX_RESTARTS + 1):
        clean_worker_files(run.model_dir)
        with tempfile.TemporaryDirectory(prefix="od-workers-") as reports:
            result = run_group(worker_specs(argv, run, Path(reports)), command)
        clean_worker_files(run.model_dir)
        if result.failed is None or result.non_finite is not None:
            return result.non_finite
        if attempt == MAX_RESTARTS:
            raise PipelineError(
                f"training workers failed {MAX_RESTARTS + 1} times in a row (last: "
                f"{result.describe()}; see the log above); {run.model_dir} keeps the "
                f"checkpoints up to step {last_step()}: run train again to resume")
        log.warning("%s: stopping the group and restarting it from the chief's last "
                    "checkpoint (step %d)", result.describe(), last_step())
    return None
