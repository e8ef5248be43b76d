"""One pipeline execution (one ``dvc repro``) is one top-level MLflow run: the execution key,
and the nesting it gives, sent at once or replayed by ``sync-mlflow`` after an outage."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from pipeline.core.params import MlflowParams, Params
from pipeline.tracking import execution
from pipeline.tracking import journal as tracking
from tests.paths import ROOT
from tests.tracking.test_journal import _bounded_http, _closed_port

KEY, NAME = "host:4242:1700000000.00", "ssd_mobilenet_v2_fpnlite_cpu on raccoon"


# --- the execution key --------------------------------------------------------------------------


@dataclass
class FakeProcess:
    """What :func:`execution.execution_key` reads of a process (psutil's names)."""

    pid: int
    command: list[str]
    started: float = 1700000000.0
    ancestors: list[FakeProcess] = field(default_factory=list)

    def name(self) -> str:
        return os.path.basename(self.command[0])

    def cmdline(self) -> list[str]:
        return self.command

    def create_time(self) -> float:
        return self.started

    def parents(self) -> list[FakeProcess]:
        return self.ancestors


def _stage_under(*ancestors: FakeProcess) -> FakeProcess:
    return FakeProcess(99, ["/venv/bin/python", "-m", "pipeline", "sample"],
                       ancestors=list(ancestors))


SHELL = FakeProcess(50, ["/bin/bash", "-c", "python -m pipeline sample --output data/sample"])
LOGIN = FakeProcess(1, ["/bin/bash", "-l"])


@pytest.mark.parametrize("command", [
    ["/venv/bin/python3.13", "/venv/bin/dvc", "repro"],  # the venv's script (comm: python)
    ["/venv/bin/python3.13", "-m", "dvc", "exp", "run"],
    ["dvc", "exp", "exec-run", "--infofile", "x.run"],  # one experiment of a queued sweep
])
def test_the_key_is_the_nearest_dvc_process_above_the_stage(command):
    dvc = FakeProcess(40, command, started=1700000123.456)
    outer = FakeProcess(30, ["/venv/bin/python", "/venv/bin/dvc", "queue", "start"])
    key = execution.execution_key(_stage_under(SHELL, dvc, outer, LOGIN))
    assert key.endswith(":40:1700000123.46")
    reused_pid = FakeProcess(40, command, started=1700000999.0)
    assert execution.execution_key(_stage_under(SHELL, reused_pid, outer, LOGIN)) != key


def test_a_stage_run_by_hand_has_no_execution():
    assert execution.execution_key(_stage_under(SHELL, LOGIN)) is None
    assert execution.execution_key(_stage_under(
        FakeProcess(40, ["/usr/bin/python", "/home/me/dvc-tools/report.py"]))) is None


def test_real_processes_two_stages_of_one_dvc_share_a_key_another_dvc_has_its_own(tmp_path):
    """Through real processes: a script named ``dvc`` starts two stages through a shell, as
    ``dvc repro`` does."""
    stage = (f"{sys.executable} -c 'from pipeline.tracking.execution import execution_key; "
             "print(execution_key())'")
    fake_dvc = tmp_path / "dvc"
    fake_dvc.write_text(f"#!{sys.executable}\nimport os, subprocess\n"
                        "print(os.getpid(), flush=True)\n"
                        f"for _ in range(2):\n    subprocess.run(['/bin/sh', '-c', {stage!r}])\n")
    fake_dvc.chmod(0o755)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first, second = (subprocess.run([str(fake_dvc)], capture_output=True, text=True, env=env,
                                    cwd=ROOT, check=True).stdout.split() for _ in range(2))
    pid, key, same = first
    assert key == same and f":{pid}:" in key
    assert second[1] == second[2] != key
    assert execution.execution_key() is None  # pytest: no dvc above


# --- the runs of one execution ------------------------------------------------------------------


def _client(settings):
    from mlflow.tracking import MlflowClient

    return MlflowClient(settings.tracking_uri)


def _top_level_runs(settings) -> list:
    client = _client(settings)
    experiment = client.get_experiment_by_name(settings.experiment)
    return [r for r in client.search_runs([experiment.experiment_id])
            if tracking.PARENT_TAG not in r.data.tags]


def _stages_nested_under(settings, run_id: str) -> list[str]:
    client = _client(settings)
    experiment = client.get_experiment_by_name(settings.experiment)
    return sorted(r.data.tags["pipeline.stage"] for r in client.search_runs(
        [experiment.experiment_id], f"tags.`{tracking.PARENT_TAG}` = '{run_id}'"))


def _record_an_execution(settings: MlflowParams, root) -> tracking.RunJournal:
    """What sample, convert, train and export of one `dvc repro` record (none sent yet)."""
    journals = []
    for stage in ("sample", "convert"):
        journal = tracking.stage_journal(settings, stage)
        journal.nest_in_execution(KEY, NAME)
        journal.params({f"{stage}.seed": 1})
        journals.append(journal)
    train = tracking.RunJournal(settings, root / "models/train")
    train.join_execution(KEY, NAME)
    train.params({"train.batch_size": 4})
    export = tracking.stage_journal(settings, "export", parent=root / "models/train")
    export.params({"export.input_type": "image_tensor"})
    for journal in journals:
        tracking.finish(journal)
    train.status("FINISHED")
    train.send()
    tracking.finish(export)
    return train


def test_the_stages_of_one_execution_nest_under_its_training_run(settings, tmp_path):
    train = _record_an_execution(settings, tmp_path)
    [top] = _top_level_runs(settings)
    assert top.info.run_id == tracking.read_run_file(train.directory)
    assert top.info.run_name == NAME and top.info.status == "FINISHED"
    assert top.data.tags["pipeline.stage"] == "train"
    assert top.data.tags[tracking.EXECUTION_TAG] == KEY
    assert top.data.params == {"train.batch_size": "4"}  # the stages' params are their own
    assert _stages_nested_under(settings, top.info.run_id) == ["convert", "export", "sample"]


def test_an_execution_recorded_while_the_server_was_down_is_rebuilt_by_sync(
        settings, tmp_path, monkeypatch):
    from pipeline.stages import sync_mlflow

    _bounded_http(monkeypatch)
    down = MlflowParams(experiment=settings.experiment,
                        tracking_uri=f"http://127.0.0.1:{_closed_port()}")
    train = _record_an_execution(down, tmp_path)
    assert train.pending() == 3 and len(tracking.pending_journals(down)) == 3
    sync_mlflow.run(argparse.Namespace(model_dir=train.directory), Params(mlflow=settings))
    [top] = _top_level_runs(settings)
    assert top.info.run_name == NAME and top.data.tags["pipeline.stage"] == "train"
    assert _stages_nested_under(settings, top.info.run_id) == ["convert", "export", "sample"]


def test_an_execution_without_training_is_one_finished_run_named_after_model_and_dataset(
        settings):
    for stage in ("sample", "convert"):
        journal = tracking.stage_journal(settings, stage)
        journal.nest_in_execution(KEY, NAME)
        assert tracking.finish(journal)
    [top] = _top_level_runs(settings)
    assert top.info.run_name == NAME and top.info.status == "FINISHED"
    assert top.data.tags["pipeline.stage"] == tracking.EXECUTION_STAGE
    [convert] = [r for r in _client(settings).search_runs([top.info.experiment_id])
                 if r.data.tags["pipeline.stage"] == "convert"]
    assert top.info.end_time >= convert.info.end_time  # it lasts until its last stage
    assert _stages_nested_under(settings, top.info.run_id) == ["convert", "sample"]


def test_a_second_training_of_one_execution_gets_a_top_level_run_of_its_own(settings,
                                                                           tmp_path):
    runs = []
    for model in ("a", "b"):
        journal = tracking.RunJournal(settings, tmp_path / model)
        journal.join_execution(KEY, NAME)
        journal.params({"model.name": model})  # MLflow would refuse a second value
        assert journal.send()
        runs.append(tracking.read_run_file(journal.directory))
    assert runs[0] != runs[1]
    assert len(_top_level_runs(settings)) == 2


def test_the_stages_nest_in_the_execution_of_the_dvc_above_them(settings, monkeypatch):
    monkeypatch.setattr(execution, "execution_key", lambda: KEY)
    journal = execution.stage_journal(Params(mlflow=settings), "configure")
    [record] = journal.records()
    assert record == {"kind": "parent", "execution": KEY,
                      "name": "ssd_mobilenet_v2_fpnlite_cpu on sample"}
    monkeypatch.setattr(execution, "execution_key", lambda: None)  # run by hand
    assert execution.stage_journal(Params(mlflow=settings), "configure").records() == []
