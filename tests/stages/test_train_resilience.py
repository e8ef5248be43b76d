"""Acceptance tests of the train stage on a miniature project (128 px, batch 2, tens of steps):
resume after SIGKILL, stop on a NaN loss, training through a tracking server that dies."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.stages.test_end_to_end import make_project, run

pytestmark = pytest.mark.slow

NUM_STEPS = 40
MINI_PARAMS = {
    "sample": {"num_images": 24, "image_size": 128, "max_objects": 3, "val_fraction": 0.2,
               "test_fraction": 0.2, "seed": 1},
    "model": {"image_size": 128},
    "train": {"batch_size": 2, "num_steps": NUM_STEPS, "warmup_steps": 2, "learning_rate": 0.02,
              "checkpoint_every_n": 10, "eval_every_n": 0},
}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    project = make_project(tmp_path_factory.mktemp("train") / "proj", MINI_PARAMS)
    run(["dvc", "repro", "configure"], project)
    return project


def environment(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return {**env, **extra}


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


def checkpoint_listed(model_dir: Path, name: str) -> bool:
    state = model_dir / "checkpoint"
    return state.is_file() and f'"{name}"' in state.read_text()


def steps_logged(log_text: str) -> list[int]:
    return [int(s) for s in
            re.findall(rf"pipeline\.training\.monitor: step (\d+)/{NUM_STEPS} ", log_text)]


def checkpoint_step(model_dir: Path) -> int:
    import tensorflow as tf

    latest = tf.train.latest_checkpoint(str(model_dir))
    return int(tf.train.load_variable(latest, "step/.ATTRIBUTES/VARIABLE_VALUE"))


def train_runs(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("object-detection")
    return client, client.search_runs([experiment.experiment_id], "tags.`pipeline.stage` = 'train'")


def test_sigkill_after_the_first_checkpoint_then_dvc_repro_resumes_and_finishes(project):
    dvc_yaml = project / "dvc.yaml"
    dvc_yaml.write_text(dvc_yaml.read_text().replace(
        "--metrics reports/eval_metrics.json", "--metrics reports/eval_metrics.json "
        "--progress-every 0"))  # a progress line per step: the test counts the steps trained
    model_dir = project / "models/train"
    first_log = project / "attempt1.log"
    with first_log.open("w") as out:
        proc = subprocess.Popen(["dvc", "repro", "train"], cwd=project, env=environment(),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            # ckpt-1 is step 0 (train_loop saves before training); ckpt-2 is step 10.
            wait_for(lambda: checkpoint_listed(model_dir, "ckpt-2") or proc.poll() is not None,
                     900, "the first checkpoint")
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    first = first_log.read_text()
    assert proc.returncode == -signal.SIGKILL, first[-3000:]
    assert not (project / "reports/eval_metrics.json").exists()
    trained_first = max(steps_logged(first))

    second = run(["dvc", "repro", "train"], project)
    output = second.stdout + second.stderr
    resumed = int(re.search(r"resuming from models/train \(step (\d+)\)", output).group(1))
    assert resumed >= 10 and resumed <= trained_first
    second_steps = steps_logged(output)
    assert second_steps[0] == resumed + 1 and second_steps[-1] == NUM_STEPS
    assert checkpoint_step(model_dir) == NUM_STEPS
    total_trained = trained_first + (NUM_STEPS - resumed)
    print(f"steps trained: {trained_first} (killed) + {NUM_STEPS - resumed} (resumed at "
          f"{resumed}) = {total_trained} for num_steps {NUM_STEPS}: "
          f"{total_trained / NUM_STEPS:.2f}x")
    assert total_trained < 1.2 * NUM_STEPS

    metrics = json.loads((project / "reports/eval_metrics.json").read_text())
    assert metrics["final_step"] == NUM_STEPS and metrics["best_step"] == NUM_STEPS
    assert 0 <= metrics["final"]["map"] <= 1 and metrics["final"]["val_loss"] > 0
    assert (model_dir / "best/checkpoint").is_file()

    client, runs = train_runs(f"sqlite:///{project / 'mlflow.db'}")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run_id = runs[0].info.run_id
    assert json.loads((model_dir / "best/mlflow_run.json").read_text())["run_id"] == run_id
    curve = client.get_metric_history(run_id, "train/loss/total")
    assert sorted(m.step for m in curve) == [10, 20, 30, 40]  # the killed attempt's 10 included
    assert [m.step for m in client.get_metric_history(run_id, "eval/loss/total")] == [40]
    csv_steps = [int(line.split(",")[0]) for line in
                 (project / "reports/train_curves.csv").read_text().splitlines()[1:]]
    assert csv_steps == [10, 20, 30, 40]


def test_a_nan_loss_stops_training_within_a_few_steps_and_nothing_is_exported(project):
    config = (project / "models/pipeline.config").read_text()
    config = re.sub(r"(learning_rate_base|warmup_learning_rate): [0-9.e-]+", r"\1: 1e12", config)
    (project / "models/nan.config").write_text(config)
    result = run([sys.executable, "-m", "pipeline", "train", "--config", "models/nan.config",
                  "--model-dir", "models/nan", "--metrics", "reports/nan_metrics.json",
                  "--curves", "reports/nan_curves.csv", "--eval-curves", "reports/nan_eval.csv",
                  "--progress-every", "0"], project, check=False)
    assert result.returncode == 1, result.stderr[-3000:]
    stop = re.search(r"error: train: training stopped: the total loss is (-?inf|nan) at step "
                     r"(\d+); nothing is exported\. Last good checkpoint: models/nan/ckpt-1 "
                     r"\(step 0\)\. Usual causes: a learning rate too high", result.stderr)
    assert stop, result.stderr[-3000:]
    assert int(stop.group(2)) <= 5
    assert not (project / "models/nan/best").exists()
    assert not (project / "reports/nan_metrics.json").exists()
    export = run([sys.executable, "-m", "pipeline", "export", "--config", "models/nan.config",
                  "--model-dir", "models/nan/best", "--output", "models/nan_exported"], project,
                 check=False)
    assert export.returncode == 1 and "no checkpoint in models/nan/best" in export.stderr
    assert not (project / "models/nan_exported").exists()
    client, _ = train_runs(f"sqlite:///{project / 'mlflow.db'}")
    run_id = json.loads((project / "models/nan/mlflow_run.json").read_text())["run_id"]
    assert client.get_run(run_id).info.status == "FAILED"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_mlflow_server(directory: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
         f"sqlite:///{directory / 'server.db'}", "--artifacts-destination",
         str(directory / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        cwd=directory, env=environment(), stdout=subprocess.DEVNULL,
        stderr=(directory / f"server-{port}.log").open("w"), start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return urllib.request.urlopen(f"{url}/health", timeout=2).status == 200
        except OSError:
            return False

    wait_for(healthy, 180, "mlflow server")
    return server, url


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def first_eval_sent(journal) -> bool:
    try:  # the journal may be mid-write
        records = journal.records()
        return (any(r["key"].startswith("eval/") for r in records if r["kind"] == "metric")
                and journal.sent_count() == len(records))
    except (ValueError, OSError):
        return False


def test_tracking_server_dies_mid_run_training_finishes_and_every_metric_is_recovered(
        project, tmp_path):
    from pipeline.tracking import journal as tracking
    from pipeline.core.params import MlflowParams

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"].update({"num_steps": 20, "eval_every_n": 10})
    (project / "params_remote.yaml").write_text(yaml.safe_dump(params))
    # Training reads its steps from the config it trains: render one for these params.
    run([sys.executable, "-m", "pipeline", "configure", "--params", "params_remote.yaml",
         "--output", "models/remote.config"], project)
    model_dir = project / "models/remote"
    journal = tracking.RunJournal(MlflowParams(), model_dir)
    server, url = start_mlflow_server(tmp_path)
    log_path = tmp_path / "train.log"
    try:
        with log_path.open("w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "pipeline", "train", "--params", "params_remote.yaml",
                 "--config", "models/remote.config",
                 "--model-dir", "models/remote", "--metrics", "reports/remote_metrics.json",
                 "--curves", "reports/remote_curves.csv", "--eval-curves",
                 "reports/remote_eval.csv"],
                cwd=project, env=environment(MLFLOW_TRACKING_URI=url), stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True)
            try:
                # Kill the server once the first evaluation (step 10) has reached it.
                wait_for(lambda: proc.poll() is not None or first_eval_sent(journal), 900,
                         "the first evaluation to be sent")
                run_id = tracking.read_run_file(model_dir)
                stop(server)
                assert proc.wait(timeout=900) == 0, log_path.read_text()[-3000:]
            finally:
                stop(proc)
    finally:
        stop(server)
    output = log_path.read_text()
    assert "unreachable" in output and "sync-mlflow --model-dir models/remote" in output
    assert checkpoint_step(model_dir) == 20
    assert json.loads((project / "reports/remote_metrics.json").read_text())["final_step"] == 20
    assert journal.sent_count() < len(journal.records())  # the rest waits in the journal

    server, url = start_mlflow_server(tmp_path)
    try:
        sync = subprocess.run([sys.executable, "-m", "pipeline", "sync-mlflow", "--params",
                               "params_remote.yaml", "--model-dir", "models/remote"],
                              cwd=project, env=environment(MLFLOW_TRACKING_URI=url),
                              capture_output=True, text=True, timeout=600)
        assert sync.returncode == 0, sync.stderr[-3000:]
        assert f"sent to {url}, run {run_id}" in sync.stdout
        from mlflow.tracking import MlflowClient

        client = MlflowClient(url)
        assert tracking.read_run_file(model_dir) == run_id  # the same run, continued
        remote_run = client.get_run(run_id)
        assert remote_run.info.status == "FINISHED"
        journaled = [r for r in journal.records() if r["kind"] == "metric"]
        assert {k for k, _ in journal.metric_steps()} >= {
            "train/loss/total", "train/learning_rate", "eval/map"}
        for key in {r["key"] for r in journaled}:
            history = {(m.step, m.value) for m in client.get_metric_history(run_id, key)}
            assert history == {(r["step"], r["value"]) for r in journaled if r["key"] == key}
        assert [s for s, _ in sorted(
            (m.step, 0) for m in client.get_metric_history(run_id, "eval/loss/total"))] == [
            10, 20]
        artifacts = {a.path for a in client.list_artifacts(run_id, "eval")}
        assert "eval/remote_metrics.json" in artifacts
    finally:
        stop(server)
