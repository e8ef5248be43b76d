"""The configure stage renders pipeline.config and records it with what params resolved to."""
import argparse

import pytest

from pipeline.core.params import MlflowParams, ModelParams, Params, TrainParams
from pipeline.stages import configure
from tests.odapi.test_pipeline_config import write_convert_output


def test_configure_logs_the_rendered_config_and_resolved_values(tmp_path, monkeypatch):
    """The configure stage's own MLflow run holds pipeline.config and the resolved LR."""
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = Params(model=ModelParams(name="efficientdet_d0"), train=TrainParams(batch_size=4),
                    mlflow=MlflowParams(tracking_uri=uri))
    output = tmp_path / "models" / "pipeline.config"
    data_dir = write_convert_output(tmp_path / "data")
    configure.run(argparse.Namespace(data=data_dir, output=output,
                                     pretrained=tmp_path / "no-pretrained-stage"), params)
    client = MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("object-detection").experiment_id])[0]
    assert float(run.data.params["resolved.learning_rate"]) == pytest.approx(0.08 * 4 / 128)
    assert run.data.params["resolved.image_size"] == "512"
    assert "pipeline.config" in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_configure_shows_and_records_each_derived_value(tmp_path, monkeypatch, caplog):
    """Before training: one log line per derived value, and the values in the MLflow run."""
    import logging

    from mlflow.tracking import MlflowClient

    from tests.odapi.test_data_defaults import BLOOD, STEP_COST_320, data_report

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = Params(mlflow=MlflowParams(tracking_uri=uri))
    data_dir = write_convert_output(tmp_path / "data", report=data_report(BLOOD))
    with caplog.at_level(logging.INFO, logger="pipeline.stages.configure"):
        configure.run(argparse.Namespace(data=data_dir, output=tmp_path / "pipeline.config",
                                         pretrained=tmp_path / "none"), params)
    lines = [r.getMessage() for r in caplog.records if r.name == "pipeline.stages.configure"]
    assert (f"input 320 px: keeps 100% of every class's boxes >= 16 px{STEP_COST_320} "
            "[derived]") in lines
    assert any(line.startswith("anchors: the template's (smallest 24 px") for line in lines)
    assert "max_boxes 6: the busiest image [derived]" in lines
    assert "num_steps 1600: train.num_steps (640.0 epochs) [pinned]" in lines
    client = MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("object-detection").experiment_id])[0]
    assert run.data.params["derived.image_size"] == "320"
    assert run.data.params["derived.image_size.why"].startswith("input 320 px: keeps 100%")
    assert run.data.params["resolved.image_size"] == "320"
    assert run.data.params["derived.max_boxes"] == "6"
