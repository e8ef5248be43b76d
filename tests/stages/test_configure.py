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
