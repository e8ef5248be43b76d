"""Multi-worker segments: the group of worker processes, its restart, its refusals (real
processes, fake workers: the real ones train in tests/stages/test_train_multiworker.py)."""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import pytest

from pipeline.core.errors import PipelineError
from pipeline.training import cluster
from tests.training.test_loop import make_run

# A worker that records its attempt, leaves the OD API's temporary folders, and then: on its
# first attempt the victim SIGKILLs itself while the others wait (as in a collective op whose
# peer died); a worker told to report a non-finite loss does so; else it finishes.
FAKE_WORKER = """
import json, os, signal, sys, time
from pathlib import Path
spec, folder = json.loads(sys.argv[1]), Path(sys.argv[2])
plan = json.loads((folder / "plan.json").read_text())
attempts = folder / f"attempts-{spec['index']}"
attempts.write_text(attempts.read_text() + "x" if attempts.exists() else "x")
(folder / "train" / "temp_worker_001").mkdir(parents=True, exist_ok=True)
(folder / "train" / "train" / "temp_worker_001").mkdir(parents=True, exist_ok=True)
if len(attempts.read_text()) <= plan["failing_attempts"]:
    if spec["index"] == plan["victim"]:
        os.kill(os.getpid(), signal.SIGKILL)
    if plan.get("non_finite"):
        Path(spec["report"]).write_text(json.dumps({"non_finite": [7, float("nan")]}))
        sys.exit(3)
    time.sleep(60)
"""


def fake_workers(folder: Path, **plan):
    (folder / "plan.json").write_text(json.dumps(plan))
    return lambda spec: [sys.executable, "-c", FAKE_WORKER, json.dumps(spec), str(folder)]


def attempts(folder: Path, index: int) -> int:
    return len((folder / f"attempts-{index}").read_text())


@pytest.mark.parametrize("victim", [0, 1])
def test_a_killed_worker_restarts_the_whole_group_and_temporary_folders_go(
        tmp_path, caplog, victim):
    run = make_run(tmp_path / "p.config", num_workers=2)
    start = time.monotonic()
    with caplog.at_level(logging.INFO, logger=cluster.__name__):
        result = cluster.train_segment(["model_main_tf2"], run,
                                       fake_workers(tmp_path, victim=victim, failing_attempts=1),
                                       last_step=lambda: 4)
    assert result is None
    assert time.monotonic() - start < 30  # the waiting peer was stopped, not waited for
    assert [attempts(tmp_path, i) for i in (0, 1)] == [2, 2]
    assert f"worker {victim} ended with signal SIGKILL: stopping the group and restarting it " \
           "from the chief's last checkpoint (step 4)" in caplog.text
    assert not list(run.model_dir.rglob("temp_worker_*"))


def test_workers_that_keep_dying_fail_the_stage_with_the_step_to_resume_from(tmp_path,
                                                                            monkeypatch):
    monkeypatch.setattr(cluster, "MAX_RESTARTS", 1)
    run = make_run(tmp_path / "p.config", num_workers=2)
    with pytest.raises(PipelineError, match=r"training workers failed 2 times in a row \(last: "
                       r"worker 1 ended with signal SIGKILL; .* up to step 4: run train again"):
        cluster.train_segment(["model_main_tf2"], run,
                              fake_workers(tmp_path, victim=1, failing_attempts=5),
                              last_step=lambda: 4)
    assert attempts(tmp_path, 0) == 2


def test_a_non_finite_loss_on_a_worker_stops_the_group_without_a_restart(tmp_path):
    run = make_run(tmp_path / "p.config", num_workers=2)
    result = cluster.train_segment(["model_main_tf2"], run,
                                   fake_workers(tmp_path, victim=-1, failing_attempts=1,
                                                non_finite=True))
    assert result[0] == 7 and result[1] != result[1]  # (step, nan)
    assert [attempts(tmp_path, i) for i in (0, 1)] == [1, 1]


def test_more_workers_than_train_shards_or_an_uneven_batch_is_refused(tmp_path):
    run = make_run(tmp_path / "p.config", num_workers=2)
    with pytest.raises(PipelineError, match=r"train.num_workers is 2 but the train split has 1 "
                       r"record shard\(s\) .* set convert.num_shards to at least 2"):
        cluster.check_workers(run, [Path("train.tfrecord-00000-of-00001")])
    shards = [Path(f"train.tfrecord-0000{i}-of-00003") for i in range(3)]
    cluster.check_workers(run, shards)
    with pytest.raises(PipelineError, match="train.batch_size 2 is not a multiple of "
                                            "train.num_workers 3"):
        cluster.check_workers(make_run(tmp_path / "p.config", num_workers=3), shards)


def test_each_worker_gets_the_cluster_and_its_own_index():
    ports = cluster.free_ports(2)
    assert len(set(ports)) == 2
    configs = [json.loads(cluster.tf_config(ports, i)) for i in (0, 1)]
    assert configs[1] == {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                          "task": {"type": "worker", "index": 1}}
    assert configs[0]["task"]["index"] == 0
