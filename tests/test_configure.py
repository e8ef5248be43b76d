"""configure renders pipeline.config by editing the parsed TrainEvalPipelineConfig."""
import json
from pathlib import Path

import pytest

from pipeline import compat, configure
from pipeline.errors import PipelineError
from pipeline.params import ModelParams, TrainParams, available_models


@pytest.fixture
def data_dir(tmp_path) -> Path:
    (tmp_path / "label_map.pbtxt").write_text(
        "item { id: 1 name: 'a' }\nitem { id: 2 name: 'b' }\nitem { id: 3 name: 'c' }\n"
        "item { id: 4 name: 'd' }\n")
    (tmp_path / "data_report.json").write_text(json.dumps({"max_objects_per_image": 77}))
    return tmp_path


def render_to_file(data_dir: Path, model=ModelParams(), train=TrainParams()) -> dict:
    compat.apply()
    from object_detection.utils import config_util

    path = data_dir / "out" / "pipeline.config"
    configure.write_config(configure.render(model, train, data_dir), path)
    return config_util.get_configs_from_pipeline_file(str(path))


@pytest.mark.parametrize("name", available_models())
def test_every_template_parses(name):
    assert configure.load_template(name).model.WhichOneof("model")


def test_rendered_config_carries_the_params_and_the_data(data_dir):
    train = TrainParams(batch_size=4, num_steps=300, learning_rate=0.02, warmup_steps=30,
                        max_boxes=10)
    configs = render_to_file(data_dir, ModelParams(image_size=192), train)
    ssd = configs["model"].ssd
    assert ssd.num_classes == 4
    assert (ssd.image_resizer.fixed_shape_resizer.height,
            ssd.image_resizer.fixed_shape_resizer.width) == (192, 192)
    tc = configs["train_config"]
    assert (tc.batch_size, tc.num_steps) == (4, 300)
    assert tc.max_number_of_boxes == 77  # the data's busiest image wins over max_boxes=10
    cosine = tc.optimizer.momentum_optimizer.learning_rate.cosine_decay_learning_rate
    assert (cosine.learning_rate_base, cosine.total_steps, cosine.warmup_steps) == (
        pytest.approx(0.02), 300, 30)
    assert cosine.warmup_learning_rate == pytest.approx(0.002)
    assert list(configs["train_input_config"].tf_record_input_reader.input_path) == [
        str(data_dir / "train.tfrecord-*")]
    assert list(configs["eval_input_configs"][0].tf_record_input_reader.input_path) == [
        str(data_dir / "val.tfrecord-*")]
    assert configs["train_input_config"].label_map_path == str(data_dir / "label_map.pbtxt")


def test_missing_label_map_is_a_clear_error(tmp_path):
    with pytest.raises(PipelineError, match="label map not found: .*run the convert stage"):
        configure.render(ModelParams(), TrainParams(), tmp_path)


def test_a_config_that_does_not_parse_back_is_not_written(data_dir, monkeypatch):
    config = configure.render(ModelParams(), TrainParams(), data_dir)
    monkeypatch.setattr(configure, "_serialize", lambda c: "model { ssd { no_such_field: 1 } }")
    target = data_dir / "bad" / "pipeline.config"
    with pytest.raises(PipelineError, match="does not parse"):
        configure.write_config(config, target)
    assert not target.exists() and not list(target.parent.iterdir())
