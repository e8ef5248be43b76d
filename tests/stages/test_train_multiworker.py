"""Acceptance test of `train.num_workers: 2` on the miniature project: two real worker
processes (MultiWorkerMirroredStrategy, TF_CONFIG on 127.0.0.1), the chief SIGKILLed after its
first checkpoint, the group restarted from it, the result exported."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest

from pipeline.core import layout
from tests.stages.test_end_to_end import (
    make_project, run, test_saved_model_loads_and_returns_detections_of_the_right_shapes as
    check_exported_shapes_and_signature)
from tests.stages.test_train_resilience import (checkpoint_listed, checkpoint_step, environment,
                                                wait_for)

pytestmark = pytest.mark.slow

NUM_STEPS = 4
PARAMS = {
    "sample": {"num_images": 24, "image_size": 128, "max_objects": 3, "val_fraction": 0.2,
               "test_fraction": 0.2, "seed": 1},
    "convert": {"num_shards": 2},  # one train shard per worker
    "model": {"image_size": 128},
    "train": {"batch_size": 2, "num_steps": NUM_STEPS, "warmup_steps": 2, "learning_rate": 0.02,
              "checkpoint_every_n": 2, "eval_every_n": 0, "num_workers": 2},
}


def worker_pids(log_text: str, index: int) -> list[int]:
    return [int(pid) for pid in
            re.findall(rf"started training worker {index} of 2 \(pid (\d+), ", log_text)]


def test_two_workers_train_the_chief_alone_writes_a_killed_chief_resumes_export_as_one(
        tmp_path):
    project = make_project(tmp_path / "proj", PARAMS)
    run(["dvc", "repro", "configure"], project)
    model_dir = project / layout.MODEL_DIR
    log_path = project / "train.log"
    with log_path.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pipeline", "train"], cwd=project,
                                env=environment(), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            # ckpt-1 is step 0 (train_loop saves before training); ckpt-2 is step 2.
            wait_for(lambda: checkpoint_listed(model_dir, "ckpt-2") or proc.poll() is not None,
                     1200, "the chief's first checkpoint after step 0")
            os.kill(worker_pids(log_path.read_text(), 0)[0], signal.SIGKILL)
            assert proc.wait(timeout=1500) == 0, log_path.read_text()[-4000:]
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    output = log_path.read_text()
    restart = re.search(r"worker 0 ended with signal SIGKILL: stopping the group and restarting "
                        r"it from the chief's last checkpoint \(step (\d+)\)", output)
    assert restart and int(restart.group(1)) >= 2, output[-4000:]
    chiefs = worker_pids(output, 0)
    assert len(chiefs) == 2 and len(worker_pids(output, 1)) == 2  # the whole group restarted
    assert checkpoint_step(model_dir) == NUM_STEPS
    metrics = json.loads((project / layout.EVAL_METRICS).read_text())
    assert metrics["final_step"] == NUM_STEPS

    # Only the chief wrote: the other worker's temporary folders are gone, and every event
    # file (named ...tfevents.<time>.<host>.<pid>.<n>.v2) is one of the chiefs'.
    assert not list(model_dir.rglob(layout.WORKER_TEMP_GLOB))
    writers = {int(p.name.split(".")[-3]) for p in (model_dir / "train").glob("events.out.*")}
    assert writers and writers <= set(chiefs)

    run([sys.executable, "-m", "pipeline", "export"], project)
    # The same serving signature and output shapes as the single-worker export of the
    # end-to-end test (same miniature project and model).
    check_exported_shapes_and_signature(project)
