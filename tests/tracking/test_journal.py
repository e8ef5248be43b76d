"""MLflow helpers: run continuation across stages, params flattening, metric logging."""
import pytest

from tests.paths import ROOT
from pipeline.core import layout
from pipeline.tracking import client
from pipeline.tracking import journal as tracking
from pipeline.core.params import MlflowParams, Params


def test_environment_variable_overrides_the_params_uri(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking.tracking_uri(MlflowParams()) == "http://127.0.0.1:5999"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking.tracking_uri(MlflowParams()) == "sqlite:///mlflow.db"


def test_an_unknown_run_id_starts_a_new_run_instead_of_failing(settings):
    with client.start_run(settings, "report", run_id="0" * 32) as mlflow:
        assert mlflow.active_run().info.run_id != "0" * 32


def test_read_run_file_is_none_without_a_file(tmp_path):
    assert tracking.read_run_file(tmp_path) is None


def test_flatten_params_names_keys_by_section():
    flat = tracking.flatten_params(Params(), ("sample", "train"))
    assert flat["train.batch_size"] == 8
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

    params = ROOT / "params.yaml"
    assert cli.main(["sync-mlflow", "--params", str(params), "--model-dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err == (
        f"error: sync-mlflow: no MLflow journal in {tmp_path} (mlflow_journal.jsonl)\n")


# --- export and report: nested runs, outages, sync ----------------------------------------------


@pytest.fixture(scope="module")
def fake_export(tmp_path_factory):
    """A tiny exported model (a real SavedModel) and the test split it scores mAP 1.0 on."""
    from tests.stages.test_report import OBJECTS, FakeDetector, _example, _save_model, _write_data

    data = _write_data(tmp_path_factory.mktemp("data"),
                       [_example(i, objects) for i, objects in enumerate(OBJECTS)])
    return _save_model(tmp_path_factory.mktemp("export"), FakeDetector(OBJECTS)), data


@pytest.fixture
def exported(fake_export, tmp_path):
    """(export directory of this test, data directory)."""
    import shutil

    model, data = fake_export
    shutil.copytree(model, tmp_path / "exported")
    return tmp_path / "exported", data


def _bounded_http(monkeypatch) -> None:
    for name, value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0"),
                        ("MLFLOW_HTTP_REQUEST_TIMEOUT", "2"),
                        ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")):
        monkeypatch.setenv(name, value)


def _training_run(settings, model_dir) -> str:
    journal = tracking.RunJournal(settings, model_dir)
    journal.params({"train.batch_size": 4})
    assert journal.send()
    return tracking.read_run_file(model_dir)


def _children(settings, parent_id: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(settings.tracking_uri)
    experiment = client.get_experiment_by_name(settings.experiment)
    return client.search_runs([experiment.experiment_id],
                              f"tags.`mlflow.parentRunId` = '{parent_id}'",
                              order_by=["attributes.start_time ASC"])


def test_report_rerun_with_a_changed_param_records_a_second_nested_run(settings, tmp_path,
                                                                        exported):
    import argparse

    from mlflow.tracking import MlflowClient

    from pipeline.stages import report
    from pipeline.core.params import ReportParams

    model, data = exported
    train_id = _training_run(settings, tmp_path / "train")
    tracking.write_run_file(model, train_id)  # what export leaves in the export directory
    for threshold in (0.5, 0.3):
        params = Params(report=ReportParams(warmup_images=0, score_threshold=threshold,
                                            registered_model=""), mlflow=settings)
        report.run(argparse.Namespace(model=model, data=data, output=tmp_path / "reports"),
                   params)
    children = _children(settings, train_id)
    assert [r.data.params["report.score_threshold"] for r in children] == ["0.5", "0.3"]
    assert all(r.data.tags["pipeline.stage"] == "report" for r in children)
    assert all(r.data.metrics["test.map"] == pytest.approx(1.0) for r in children)
    client = MlflowClient(settings.tracking_uri)
    for child in children:
        files = {a.path for a in client.list_artifacts(child.info.run_id, "report")}
        assert "report/metrics.json" in files
    train = client.get_run(train_id)
    assert train.data.params == {"train.batch_size": "4"}  # the training run is untouched
    assert train.data.tags["pipeline.latest.report"] == children[-1].info.run_id
    assert not list(tmp_path.glob(f"{tracking.JOURNALS_DIR}/*"))  # sent, nothing left over


def test_report_with_the_server_down_exits_0_and_sync_sends_it_and_registers_the_model(
        settings, tmp_path, exported, monkeypatch, capsys):
    import json

    from mlflow.tracking import MlflowClient

    from pipeline import cli

    model, data = exported
    train_id = _training_run(settings, tmp_path / "train")
    tracking.write_run_file(model, train_id)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(f"report:\n  warmup_images: 0\n  registered_model: detector\n"
                           f"mlflow:\n  experiment: {settings.experiment}\n"
                           f"  tracking_uri: {settings.tracking_uri}\n")
    _bounded_http(monkeypatch)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_closed_port()}")
    argv = ["--params", str(params_file)]
    capsys.readouterr()  # only the stage's own output counts
    assert cli.main(["report", *argv, "--model", str(model), "--data", str(data),
                     "--output", str(tmp_path / "reports")]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert len([line for line in err.splitlines() if "unreachable" in line]) == 1
    journals = list(tmp_path.glob(f"{tracking.JOURNALS_DIR}/*/{tracking.JOURNAL_FILE}"))
    assert len(journals) == 1
    kinds = {json.loads(line)["kind"] for line in journals[0].read_text().splitlines()}
    assert kinds == {"parent", "param", "metric", "artifact", "register", "status"}
    assert (tmp_path / "reports" / "metrics.json").is_file()

    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert cli.main(["sync-mlflow", *argv]) == 0
    [child] = _children(settings, train_id)
    assert child.data.tags["pipeline.stage"] == "report" and child.info.status == "FINISHED"
    assert child.data.metrics["test.map"] == pytest.approx(1.0)
    champion = MlflowClient(settings.tracking_uri).get_model_version_by_alias("detector",
                                                                              "champion")
    assert champion.run_id == child.info.run_id and champion.tags["test_map"] == "1.0"
    assert not journals[0].exists()
    assert cli.main(["sync-mlflow", *argv]) == 0  # nothing left: a no-op


def test_export_and_report_of_an_offline_training_nest_under_it_once_synced(
        settings, tmp_path, monkeypatch, caplog):
    import argparse

    from pipeline.stages import export
    from pipeline.stages import sync_mlflow

    _bounded_http(monkeypatch)
    down = MlflowParams(experiment=settings.experiment,
                        tracking_uri=f"http://127.0.0.1:{_closed_port()}")
    train_dir, best, exported = (tmp_path / "models/train", tmp_path / "models/train/best",
                                 tmp_path / "models/exported")
    train = tracking.RunJournal(down, train_dir)
    train.params({"train.batch_size": 4})
    assert not train.send()
    best.mkdir()
    tracking.link_run(train_dir, best)  # what train's copy_best does
    exported.mkdir()
    tracking.link_run(best, exported)  # what export does
    (exported / "pipeline.config").write_text("model {}\n")
    (exported / layout.VERIFICATION_FILE).write_text("{}\n")
    caplog.clear()
    export._log_to_mlflow(Params(mlflow=down), exported, best,
                          {"max_score_difference": 0.0, "max_box_difference": 0.5})
    assert [r.levelname for r in caplog.records if "unreachable" in r.getMessage()] == [
        "WARNING"]  # one warning line, no exception
    (exported / "pipeline.config").write_text("changed after the export\n")
    report = tracking.stage_journal(down, "report", parent=exported)
    report.values({"map": 0.75}, prefix="test.")
    assert not tracking.finish(report)

    sync_mlflow.run(argparse.Namespace(model_dir=None), Params(mlflow=settings))
    train_id = tracking.read_run_file(train_dir)
    assert train_id and tracking.read_run_file(exported) == train_id
    export_run, report_run = _children(settings, train_id)
    assert export_run.data.tags["pipeline.stage"] == "export"
    assert export_run.data.metrics["export.max_box_difference"] == 0.5
    assert export_run.data.params["export.input_type"] == "image_tensor"
    assert report_run.data.metrics["test.map"] == 0.75
    from mlflow.tracking import MlflowClient

    client = MlflowClient(settings.tracking_uri)
    logged = client.download_artifacts(export_run.info.run_id, "export/pipeline.config",
                                       str(tmp_path / "download"))
    assert open(logged).read() == "model {}\n"  # the file as it was when exported
    assert client.get_run(train_id).data.tags["pipeline.latest.export"] == (
        export_run.info.run_id)


# --- a journal torn by a crash ------------------------------------------------------------------


def test_a_journal_torn_mid_line_is_resumed_and_synced_with_a_warning(settings, tmp_path,
                                                                        caplog):
    from mlflow.tracking import MlflowClient

    from pipeline import cli

    journal = tracking.RunJournal(settings, tmp_path / "train")
    journal.metrics([("loss", 1, 2.0), ("loss", 2, 1.0)])
    with journal.path.open("a") as handle:
        handle.write('{"kind": "metric", "key": "loss", "val')  # the crash
    assert len(journal.records()) == 2
    assert "skipped 1 unreadable line" in caplog.text
    journal.metrics([("loss", 3, 0.5)])  # resumed training appends
    assert [r["step"] for r in journal.records()] == [1, 2, 3]
    (tmp_path / "params.yaml").write_text(
        f"mlflow:\n  experiment: {settings.experiment}\n  tracking_uri: {settings.tracking_uri}\n")
    assert cli.main(["sync-mlflow", "--params", str(tmp_path / "params.yaml"),
                     "--model-dir", str(tmp_path / "train")]) == 0
    history = MlflowClient(settings.tracking_uri).get_metric_history(
        tracking.read_run_file(tmp_path / "train"), "loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.0), (2, 1.0), (3, 0.5)]


def test_a_torn_run_file_starts_a_new_run_instead_of_failing(settings, tmp_path):
    (tmp_path / tracking.RUN_FILE).write_text('{"run_id": "ab')
    journal = tracking.RunJournal(settings, tmp_path)
    journal.params({"a": 1})
    assert journal.send() and len(tracking.read_run_file(tmp_path)) == 32
