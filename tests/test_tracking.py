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
