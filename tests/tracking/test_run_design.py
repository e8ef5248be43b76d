"""The runs as MLflow users expect them: the training run named after model and dataset, its
dataset recorded as an input, the experiment shown as a model-training experiment."""
from __future__ import annotations

from argparse import Namespace

from pipeline.core.layout import CONFIGS_DIR
from pipeline.core.params import DataParams, Params
from pipeline.tracking import client as tracking_client
from pipeline.tracking import journal as tracking


def _client(settings):
    from mlflow.tracking import MlflowClient

    return MlflowClient(settings.tracking_uri)


def test_the_training_run_is_named_after_model_and_dataset_and_logs_the_dataset(settings,
                                                                               tmp_path):
    from pipeline.core import compat
    from pipeline.stages import train

    compat.apply()
    data = tmp_path / "tfrecords"
    data.mkdir()
    (tmp_path / "raccoon").mkdir()  # data.root must exist
    params = Params(data=DataParams(root=str(tmp_path / "raccoon")), mlflow=settings)
    args = Namespace(config=CONFIGS_DIR / "ssd_mobilenet_v2_fpnlite_cpu.config", data=data)
    journal = tracking.RunJournal(settings, tmp_path / "train")
    train.record_run_inputs(journal, args, params)
    assert journal.send()
    run = _client(settings).get_run(tracking.read_run_file(tmp_path / "train"))
    assert run.info.run_name == "ssd_mobilenet_v2_fpnlite_cpu on raccoon"
    [dataset_input] = run.inputs.dataset_inputs
    assert dataset_input.dataset.name == "raccoon"
    assert dataset_input.dataset.digest == run.data.tags["dataset.md5"]  # "unknown" outside DVC
    assert str(data) in dataset_input.dataset.source
    assert {(t.key, t.value) for t in dataset_input.tags} == {("mlflow.data.context", "training")}


def test_the_experiment_is_a_model_training_experiment(settings, tmp_path):
    journal = tracking.RunJournal(settings, tmp_path / "one")
    journal.params({"a": 1})
    assert journal.send()
    experiment = _client(settings).get_experiment_by_name(settings.experiment)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_an_existing_experiment_is_tagged_unless_its_kind_was_chosen(settings):
    client = _client(settings)
    plain = client.create_experiment("plain")
    chosen = client.create_experiment("chosen", tags={"mlflow.experimentKind": "finetuning"})
    assert tracking_client.experiment_id(client, "plain") == plain
    assert tracking_client.experiment_id(client, "chosen") == chosen
    assert client.get_experiment(plain).tags["mlflow.experimentKind"] == "custom_model_development"
    assert client.get_experiment(chosen).tags["mlflow.experimentKind"] == "finetuning"
