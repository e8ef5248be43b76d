"""The pretrained folder: the checkpoint to fine-tune from becomes a folder of the project (a DVC
out), fed from the shared cache; ``none`` gives a small marker folder; configure reads it."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.core import layout
from pipeline.core.errors import PipelineError
from pipeline.core.params import ModelParams, TrainParams
from pipeline.odapi import checkpoints, pipeline_config, pretrained
from pipeline.odapi import templates as zoo
from tests.odapi import test_checkpoints
from tests.odapi.test_checkpoints import KERNEL, Server, make_archive
from tests.odapi.test_pipeline_config import write_convert_output

NAME = "ssd_mobilenet_v2_320"  # a template with a zoo archive
SSD = ("ssd", "ssd_mobilenet_v2_keras")
FASTER_RCNN = ("faster_rcnn", "faster_rcnn_resnet50_keras")
checkpoint_dir = test_checkpoints.checkpoint_dir  # the fixture: a tiny zoo-style checkpoint
ARCHITECTURE_CONFIG = 'model { ssd { feature_extractor { type: "ssd_mobilenet_v2_keras" } } }\n'


@pytest.fixture
def served_zoo(tmp_path, monkeypatch, checkpoint_dir):
    """The template's zoo archive (the tiny test checkpoint, its config naming the template's
    architecture) on a server on 127.0.0.1; an empty cache and lock file."""
    archive_name = zoo.spec_for(NAME).zoo_archive
    folder = tmp_path / "built" / archive_name
    shutil.copytree(checkpoint_dir, folder)
    (folder / "pipeline.config").write_text(ARCHITECTURE_CONFIG)
    (tmp_path / "served" / "models").mkdir(parents=True)
    make_archive(tmp_path / "served" / "models" / f"{archive_name}.tar.gz", folder)
    server = Server(tmp_path / "served")
    monkeypatch.setenv("OD_PIPELINE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(checkpoints, "LOCK_FILE", tmp_path / "checkpoints.lock")
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def zoo_model(server: Server, name: str = NAME) -> ModelParams:
    return ModelParams(name=name, checkpoint="zoo", checkpoint_url=server.url)


def project_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() and not p.name.startswith("."))


def test_none_writes_only_a_marker_and_configure_trains_from_scratch(tmp_path):
    output = tmp_path / "models" / "pretrained"
    pretrained.write(ModelParams(), SSD, output)
    assert project_files(output) == [layout.PRETRAINED_NONE]
    config = pipeline_config.render(ModelParams(), TrainParams(),
                                    write_convert_output(tmp_path / "data"), output)
    assert not config.train_config.fine_tune_checkpoint


def test_zoo_checkpoint_is_copied_into_the_project_and_configure_uses_that_copy(
        served_zoo, tmp_path):
    import tensorflow as tf

    output = tmp_path / "models" / "pretrained"
    pretrained.write(zoo_model(served_zoo), SSD, output)
    assert project_files(output) == ["checkpoint/ckpt-0.data-00000-of-00001",
                                     "checkpoint/ckpt-0.index", "pipeline.config", "source.json"]
    source = json.loads((output / layout.PRETRAINED_SOURCE).read_text())
    assert source["sha256"] == checkpoints.read_lock()[source["archive"]].sha256
    config = pipeline_config.render(zoo_model(served_zoo), TrainParams(),
                                    write_convert_output(tmp_path / "data"), output)
    prefix = config.train_config.fine_tune_checkpoint
    assert prefix == str(output / "checkpoint" / "ckpt-0")  # the copy: works after dvc pull
    shutil.rmtree(tmp_path / "cache")
    reader = tf.train.load_checkpoint(prefix)
    assert np.array_equal(reader.get_tensor("model/kernel/.ATTRIBUTES/VARIABLE_VALUE"), KERNEL)


def test_a_local_checkpoint_prefix_is_copied_as_ckpt_0(checkpoint_dir, tmp_path):
    trained = tmp_path / "train"  # a training folder: ckpt-7.*, no pipeline.config beside it
    trained.mkdir()
    for part in (checkpoint_dir / "checkpoint").glob("ckpt-0.*"):
        shutil.copy2(part, trained / part.name.replace("ckpt-0", "ckpt-7"))
    output = tmp_path / "pretrained"
    pretrained.write(ModelParams(checkpoint=str(trained / "ckpt-7")), SSD, output)
    assert project_files(output) == ["checkpoint/ckpt-0.data-00000-of-00001",
                                     "checkpoint/ckpt-0.index", "source.json"]
    assert json.loads((output / "source.json").read_text()) == {
        "checkpoint": str(trained / "ckpt-7")}


def test_a_refused_download_leaves_no_output(served_zoo, tmp_path):
    served_zoo.mode = "html"
    output = tmp_path / "models" / "pretrained"
    with pytest.raises(PipelineError, match="answered a web page"):
        pretrained.write(zoo_model(served_zoo), SSD, output)
    assert list((tmp_path / "models").iterdir()) == []


def test_configure_refuses_a_pretrained_folder_of_another_architecture(served_zoo, tmp_path):
    output = tmp_path / "models" / "pretrained"
    pretrained.write(zoo_model(served_zoo), SSD, output)
    with pytest.raises(PipelineError, match="is a ssd/ssd_mobilenet_v2_keras checkpoint .*the "
                                            "template is faster_rcnn/faster_rcnn_resnet50_keras"):
        pretrained.fine_tune_prefix(zoo_model(served_zoo, "faster_rcnn_resnet50_640"),
                                    FASTER_RCNN, output)


def test_configure_refuses_a_folder_written_for_other_params(tmp_path):
    output = tmp_path / "pretrained"
    pretrained.write(ModelParams(), SSD, output)
    with pytest.raises(PipelineError, match="for model.checkpoint 'none', params say 'zoo': run "
                                            "the pretrained stage"):
        pretrained.fine_tune_prefix(ModelParams(name=NAME, checkpoint="zoo"), SSD, output)


@pytest.mark.parametrize("broken", ["empty", "no index", "damaged source"])
def test_a_broken_pretrained_folder_is_a_clear_error(broken, tmp_path):
    folder = tmp_path / "pretrained"
    folder.mkdir()
    if broken != "empty":
        (folder / layout.PRETRAINED_SOURCE).write_text(
            '{"checkpoint": "zoo"}' if broken == "no index" else "{not json")
    message = {"empty": "holds neither none.json nor source.json: run the pretrained",
               "no index": "has no checkpoint/ckpt-0.index: run the pretrained",
               "damaged source": "source.json is damaged"}[broken]
    with pytest.raises(PipelineError, match=message):
        pretrained.fine_tune_prefix(ModelParams(name=NAME, checkpoint="zoo"), SSD, folder)


def test_without_the_folder_configure_resolves_model_checkpoint_itself(tmp_path):
    assert pretrained.fine_tune_prefix(ModelParams(), SSD, tmp_path / "absent") is None
