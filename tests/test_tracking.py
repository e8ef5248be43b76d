"""MLflow helpers: run continuation across stages, params flattening, metric logging."""
import pytest

from pipeline import tracking
from pipeline.params import MlflowParams, Params


@pytest.fixture
def settings(tmp_path, monkeypatch) -> MlflowParams:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # artifacts go to ./mlruns
    return MlflowParams(experiment="t", tracking_uri=f"sqlite:///{tmp_path / 'm.db'}")


def test_environment_variable_overrides_the_params_uri(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking.tracking_uri(MlflowParams()) == "http://127.0.0.1:5999"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking.tracking_uri(MlflowParams()) == "sqlite:///mlflow.db"


def test_a_later_stage_continues_the_run_recorded_in_the_run_file(settings, tmp_path):
    with tracking.start_run(settings, "train") as mlflow:
        run_id = mlflow.active_run().info.run_id
        tracking.write_run_file(tmp_path, run_id)
        tracking.log_numbers(mlflow, {"loss": 1.5})
    with tracking.start_run(settings, "report", run_id=tracking.read_run_file(tmp_path)) as mlflow:
        tracking.log_numbers(mlflow, {"map": 0.5, "per_class": {"a b": {"ap": 0.25}},
                                      "note": "skipped", "flag": True, "none": None})
    run = mlflow.get_run(run_id)
    assert run.data.metrics == {"loss": 1.5, "map": 0.5, "per_class.a b.ap": 0.25}
    assert run.data.tags["pipeline.stage"] == "train"
    assert run.data.tags["pipeline.stage.report"] == "done"


def test_an_unknown_run_id_starts_a_new_run_instead_of_failing(settings):
    with tracking.start_run(settings, "report", run_id="0" * 32) as mlflow:
        assert mlflow.active_run().info.run_id != "0" * 32


def test_read_run_file_is_none_without_a_file(tmp_path):
    assert tracking.read_run_file(tmp_path) is None


def test_flatten_params_names_keys_by_section():
    flat = tracking.flatten_params(Params(), ("sample", "train"))
    assert flat["train.batch_size"] == 16
    assert flat["sample.classes"] == ["circle", "square", "triangle"]
    assert not any(k.startswith("model.") for k in flat)


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_journal_keeps_records_when_the_server_is_unreachable_and_sends_them_later(
        settings, tmp_path, monkeypatch):
    import time

    from mlflow.tracking import MlflowClient

    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"):
        monkeypatch.delenv(name, raising=False)
    down = MlflowParams(experiment="t", tracking_uri=f"http://127.0.0.1:{_closed_port()}",
                        http_max_retries=1, http_timeout_s=2)
    journal = tracking.RunJournal(down, tmp_path / "train")
    journal.params({"train.batch_size": 4})
    journal.tags({"model.name": "m"})
    journal.metrics([("train/Loss/total_loss", 10, 2.0), ("train/Loss/total_loss", 20, 1.0)])
    (tmp_path / "a.json").write_text("{}")
    journal.artifact(tmp_path / "a.json", "eval")
    journal.status("FINISHED")
    started = time.monotonic()
    assert journal.send() is False
    assert time.monotonic() - started < 30  # bounded retries, not MLflow's minutes of backoff
    assert len(journal.records()) == 6 and journal.sent_count() == 0

    up = tracking.RunJournal(settings, tmp_path / "train")
    assert up.send() is True
    run_id = tracking.read_run_file(tmp_path / "train")
    client = MlflowClient(settings.tracking_uri)
    history = client.get_metric_history(run_id, "train/Loss/total_loss")
    assert [(m.step, m.value) for m in history] == [(10, 2.0), (20, 1.0)]
    run = client.get_run(run_id)
    assert run.data.params == {"train.batch_size": "4"}
    assert run.data.tags["model.name"] == "m" and run.info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(run_id, "eval")] == ["eval/a.json"]
    up.metrics([("train/Loss/total_loss", 20, 5.0), ("train/Loss/total_loss", 30, 0.5)])
    assert up.send() is True
    history = client.get_metric_history(run_id, "train/Loss/total_loss")
    assert [(m.step, m.value) for m in history] == [(10, 2.0), (20, 1.0), (30, 0.5)]


def test_journal_replaces_characters_mlflow_refuses(settings, tmp_path):
    journal = tracking.RunJournal(settings, tmp_path)
    journal.metrics([("eval/DetectionBoxes_Precision/mAP@.50IOU", 5, 0.5)])
    assert journal.metric_steps() == {("eval/DetectionBoxes_Precision/mAP_.50IOU", 5)}


def test_sync_mlflow_without_a_journal_is_a_one_line_error(tmp_path, capsys):
    from pathlib import Path

    from pipeline import cli

    params = Path(__file__).resolve().parents[1] / "params.yaml"
    assert cli.main(["sync-mlflow", "--params", str(params), "--model-dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err == (
        f"error: sync-mlflow: no MLflow journal in {tmp_path} (mlflow_journal.jsonl)\n")
