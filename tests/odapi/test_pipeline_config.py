"""pipeline.config is rendered by editing the parsed TrainEvalPipelineConfig of a template."""
import json
from pathlib import Path

import pytest

from pipeline.core import compat
from pipeline.odapi import data_defaults, pipeline_config
from pipeline.core.errors import ParamsError, PipelineError
from pipeline.core.params import ModelParams, TrainParams, available_models

from tests.odapi.test_data_defaults import BLOOD, CPU, SPECKS, data_report


def write_convert_output(folder: Path, classes: int = 4, max_objects: int = 77,
                         report: dict | None = None) -> Path:
    """The files configure reads from the convert stage: a label map and the data report
    (by default one with no box shapes, as before issue 18)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "label_map.pbtxt").write_text(
        "".join(f"item {{ id: {i} name: 'c{i}' }}\n" for i in range(1, classes + 1)))
    report = report or {"max_objects_per_image": max_objects}
    (folder / "data_report.json").write_text(json.dumps(report))
    return folder


@pytest.fixture
def data_dir(tmp_path) -> Path:
    return write_convert_output(tmp_path)


def render_to_file(data_dir: Path, model=ModelParams(), train=TrainParams()) -> dict:
    compat.apply()
    from object_detection.utils import config_util

    path = data_dir / "out" / "pipeline.config"
    pipeline_config.write_config(pipeline_config.render(model, train, data_dir), path)
    return config_util.get_configs_from_pipeline_file(str(path))


def test_rendered_config_carries_the_params_and_the_data(data_dir):
    train = TrainParams(batch_size=4, num_steps=300, learning_rate=0.08, warmup_steps=30,
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
    # 0.08 at the template's reference batch 16 -> 0.02 at batch 4
    assert (cosine.learning_rate_base, cosine.total_steps, cosine.warmup_steps) == (
        pytest.approx(0.02), 300, 30)
    assert cosine.warmup_learning_rate == pytest.approx(0.002)
    assert not tc.fine_tune_checkpoint  # model.checkpoint: none
    assert list(configs["train_input_config"].tf_record_input_reader.input_path) == [
        str(data_dir / "train.tfrecord-*")]
    assert list(configs["eval_input_configs"][0].tf_record_input_reader.input_path) == [
        str(data_dir / "val.tfrecord-*")]
    assert configs["train_input_config"].label_map_path == str(data_dir / "label_map.pbtxt")


def test_missing_label_map_is_a_clear_error(tmp_path):
    with pytest.raises(PipelineError, match="label map not found: .*run the convert stage"):
        pipeline_config.render(ModelParams(), TrainParams(), tmp_path)


def test_a_config_that_does_not_parse_back_is_not_written(data_dir, monkeypatch):
    config = pipeline_config.render(ModelParams(), TrainParams(), data_dir)
    monkeypatch.setattr(pipeline_config, "serialize",
                        lambda c: "model { ssd { no_such_field: 1 } }")
    target = data_dir / "bad" / "pipeline.config"
    with pytest.raises(PipelineError, match="does not parse"):
        pipeline_config.write_config(config, target)
    assert not target.exists() and not list(target.parent.iterdir())


def cosine_of(config):
    return config.train_config.optimizer.momentum_optimizer.learning_rate.cosine_decay_learning_rate


def test_the_default_model_keeps_its_learning_rate(data_dir):
    """Shipped defaults: 0.04 peak at batch 8 (0.08 at the reference 16), warmup from 0.004
    over 160 of 1600 steps."""
    config = pipeline_config.render(ModelParams(), TrainParams(), data_dir)
    cosine = cosine_of(config)
    assert config.train_config.batch_size == 8
    assert (cosine.learning_rate_base, cosine.warmup_learning_rate) == (
        pytest.approx(0.04), pytest.approx(0.004))
    assert (cosine.warmup_steps, cosine.total_steps, config.train_config.num_steps) == (
        160, 1600, 1600)


@pytest.mark.parametrize("name, batch, learning_rate, expected", [
    ("efficientdet_d0", 16, 0.0, 0.08 * 16 / 128),
    ("efficientdet_d0", 256, 0.0, 0.16),
    ("faster_rcnn_resnet50_640", 8, 0.0, 0.04 * 8 / 64),
    ("ssd_mobilenet_v2_320", 32, 0.0, 0.08 * 32 / 512),
    ("ssd_mobilenet_v2_fpnlite_320", 64, 0.2, 0.2 * 64 / 128),
])
def test_learning_rate_scales_linearly_from_the_template_reference(data_dir, name, batch,
                                                                   learning_rate, expected):
    train = TrainParams(batch_size=batch, learning_rate=learning_rate)
    cosine = cosine_of(pipeline_config.render(ModelParams(name=name), train, data_dir))
    assert cosine.learning_rate_base == pytest.approx(expected)
    assert cosine.warmup_learning_rate == pytest.approx(expected * 0.1)


@pytest.mark.parametrize("name", available_models())
def test_image_size_zero_keeps_the_template_size(data_dir, name):
    size = pipeline_config.image_size(pipeline_config.load_template(name))
    assert size >= 128  # a size the template states (the resizer's defaults are 0 or absent)
    rendered = pipeline_config.render(ModelParams(name=name), TrainParams(), data_dir)
    assert pipeline_config.image_size(rendered) == size


def test_image_size_reaches_keep_aspect_resizers_and_the_crop_augmentation(data_dir):
    config = pipeline_config.render(ModelParams(name="efficientdet_d0", image_size=384),
                                    TrainParams(), data_dir)
    resizer = config.model.ssd.image_resizer.keep_aspect_ratio_resizer
    assert (resizer.min_dimension, resizer.max_dimension) == (384, 384)
    crops = [s.random_scale_crop_and_pad_to_square for s in
             config.train_config.data_augmentation_options if s.HasField(
                 "random_scale_crop_and_pad_to_square")]
    assert [c.output_size for c in crops] == [384]


def augmentation_names(config) -> list[str]:
    return [s.WhichOneof("preprocessing_step")
            for s in config.train_config.data_augmentation_options]


def test_augmentations_keep_replace_or_remove(data_dir):
    def render(names):
        return pipeline_config.render(ModelParams(name="ssd_mobilenet_v2_320", image_size=320),
                                      TrainParams(augmentations=names), data_dir)

    assert augmentation_names(render(())) == ["random_horizontal_flip", "ssd_random_crop"]
    assert augmentation_names(render(("none",))) == []
    replaced = render(("random_adjust_brightness", "random_scale_crop_and_pad_to_square"))
    assert augmentation_names(replaced) == ["random_adjust_brightness",
                                            "random_scale_crop_and_pad_to_square"]
    assert replaced.train_config.data_augmentation_options[1].random_scale_crop_and_pad_to_square \
        .output_size == 320


@pytest.mark.parametrize("name", ["ssd_mobilenet_v2_fpnlite_cpu", "faster_rcnn_resnet50_640"])
def test_score_threshold_and_nms_reach_the_final_post_processing(data_dir, name):
    model = ModelParams(name=name, score_threshold=0.3, nms_iou_threshold=0.45, max_detections=7)
    config = pipeline_config.render(model, TrainParams(), data_dir)
    arch = pipeline_config.meta_architecture(config)
    post = arch.second_stage_post_processing if name.startswith("faster") else arch.post_processing
    nms = post.batch_non_max_suppression
    assert (nms.score_threshold, nms.iou_threshold) == (pytest.approx(0.3), pytest.approx(0.45))
    assert (nms.max_detections_per_class, nms.max_total_detections) == (7, 7)


def test_a_local_checkpoint_is_fine_tuned_as_a_detection_checkpoint(data_dir, tmp_path):
    prefix = Path(local_checkpoint(tmp_path))
    configs = render_to_file(data_dir, ModelParams(name="efficientdet_d0",
                                                   checkpoint=str(prefix)))
    tc = configs["train_config"]
    assert tc.fine_tune_checkpoint == str(prefix.resolve())
    assert tc.fine_tune_checkpoint_type == "detection"  # not the zoo configs' "classification"


def local_checkpoint(tmp_path: Path) -> str:
    """A checkpoint prefix (an empty .index: configure only checks that it exists)."""
    prefix = tmp_path / "ckpt" / "ckpt-0"
    prefix.parent.mkdir(exist_ok=True)
    Path(f"{prefix}.index").write_bytes(b"")
    return str(prefix)


@pytest.mark.parametrize("name", available_models())
def test_fine_tuning_learning_rate_and_the_templates_warmup(name, data_dir, tmp_path):
    from pipeline.odapi import templates as zoo

    spec, train = zoo.spec_for(name), TrainParams(batch_size=8, num_steps=1000)
    scratch = cosine_of(pipeline_config.render(ModelParams(name=name), train, data_dir))
    tuned = cosine_of(pipeline_config.render(
        ModelParams(name=name, checkpoint=local_checkpoint(tmp_path)), train, data_dir))
    peak = spec.reference_learning_rate * 8 / spec.reference_batch_size
    assert scratch.learning_rate_base == pytest.approx(peak)
    assert scratch.warmup_steps == train.warmup_steps
    assert tuned.learning_rate_base == pytest.approx(peak * spec.finetune_learning_rate_factor)
    # Lower for the zoo templates; the CPU template (no zoo archive) keeps its peak (measured).
    assert (tuned.learning_rate_base < scratch.learning_rate_base) == bool(spec.zoo_archive)
    assert tuned.warmup_steps == round(spec.finetune_warmup_fraction * 1000)
    assert tuned.warmup_learning_rate == pytest.approx(
        tuned.learning_rate_base * spec.finetune_warmup_start_fraction)
    # An explicit train.learning_rate is used as given (still scaled to the batch size).
    explicit = pipeline_config.peak_learning_rate(
        ModelParams(name=name, checkpoint="zoo"), TrainParams(batch_size=8, learning_rate=0.2))
    assert explicit == pytest.approx(0.2 * 8 / spec.reference_batch_size)


@pytest.mark.parametrize("steps", [-1, 300])
def test_freeze_backbone_writes_the_templates_backbone_regexes_to_freeze_variables(
        steps, data_dir, tmp_path):
    from pipeline.odapi import templates as zoo

    model = ModelParams(name="efficientdet_d0", checkpoint=local_checkpoint(tmp_path))
    configs = render_to_file(data_dir, model, TrainParams(freeze_backbone_steps=steps))
    assert list(configs["train_config"].freeze_variables) == list(
        zoo.spec_for("efficientdet_d0").backbone_variables) != []
    assert not render_to_file(data_dir, model, TrainParams())["train_config"].freeze_variables


def test_freezing_a_backbone_trained_from_scratch_is_refused(data_dir):
    with pytest.raises(PipelineError, match="freeze_backbone_steps needs pretrained weights"):
        pipeline_config.render(ModelParams(), TrainParams(freeze_backbone_steps=-1), data_dir)


# --- defaults derived from the data report (issue 18) ------------------------------------------


def anchors_of(config):
    return pipeline_config.anchor_generator(config)[1]


def test_the_rendered_config_carries_the_values_derived_from_the_data(tmp_path):
    report = data_report(SPECKS)  # 640x480 images with 10 px platelets, 6 objects per image
    data_dir = write_convert_output(tmp_path / "data", report=report)
    train = TrainParams(num_steps=0, epochs=80, batch_size=16, warmup_steps=80)
    configs = render_to_file(data_dir, ModelParams(), train)
    expected = data_defaults.derive(report, CPU, ModelParams(), train, fine_tuning=False)
    ssd, tc = configs["model"].ssd, configs["train_config"]
    assert ssd.image_resizer.fixed_shape_resizer.height == expected.image_size.value == 384
    anchors = ssd.anchor_generator.multiscale_anchor_generator
    assert list(anchors.aspect_ratios) == pytest.approx(expected.aspect_ratios.value)
    assert expected.aspect_ratios.value == (1.0, 2.0, 0.5)  # they fit these boxes: kept
    assert anchors.anchor_scale == pytest.approx(3.0 * expected.anchor_factor.value) == 1.5
    assert tc.max_number_of_boxes == expected.max_boxes.value == 6
    assert tc.num_steps == expected.num_steps.value == 80 * 20 // 16
    cosine = tc.optimizer.momentum_optimizer.learning_rate.cosine_decay_learning_rate
    assert cosine.total_steps == 100


def test_fitted_aspect_ratios_are_written_when_the_template_s_do_not_fit(tmp_path):
    report = data_report([[("line", 400, 40)]] * 5)  # 7.5 wide per high once squashed
    data_dir = write_convert_output(tmp_path / "data", report=report)
    configs = render_to_file(data_dir, ModelParams(), TrainParams())
    anchors = configs["model"].ssd.anchor_generator.multiscale_anchor_generator
    assert list(anchors.aspect_ratios) == [pytest.approx(7.5, rel=0.1)]


def test_the_template_facts_are_read_from_the_template():
    """The CPU facts the pure tests use are the default template's."""
    assert pipeline_config.template_facts(pipeline_config.load_template(
        "ssd_mobilenet_v2_fpnlite_cpu"), "ssd_mobilenet_v2_fpnlite_cpu") == CPU


def test_a_pinned_param_wins_in_the_rendered_config(tmp_path):
    data_dir = write_convert_output(tmp_path / "data", report=data_report(BLOOD))
    model = ModelParams(image_size=256, anchor_aspect_ratios=(1.0, 2.0), anchor_min_size=36)
    config = pipeline_config.render(model, TrainParams(max_boxes=20), data_dir)
    anchors = anchors_of(config)
    assert pipeline_config.image_size(config) == 256
    assert list(anchors.aspect_ratios) == [1.0, 2.0]
    assert anchors.anchor_scale == pytest.approx(36 / 8)  # level 3: 36 px = scale x 2^3
    assert config.train_config.max_number_of_boxes == 20


@pytest.mark.parametrize("name, smallest", [
    ("ssd_mobilenet_v2_fpnlite_cpu", (24.0, 0.0)),   # anchor_scale 3 x 2^3
    ("efficientdet_d0", (32.0, 0.0)),                # 4 x 2^3
    ("faster_rcnn_resnet50_640", (64.0, 0.0)),       # scale 0.25 x the 256 px base anchor
    ("ssd_mobilenet_v2_320", (0.0, 0.1)),            # the lowest layer's 0.1 x input size
])
def test_anchors_are_scaled_in_each_anchor_generator(name, smallest):
    config = pipeline_config.load_template(name)
    kind, generator = pipeline_config.anchor_generator(config)
    assert pipeline_config.smallest_anchor(kind, generator) == pytest.approx(smallest)
    pipeline_config.set_anchors(config, (0.8, 1.25), 0.5)
    kind, generator = pipeline_config.anchor_generator(config)
    assert list(generator.aspect_ratios) == pytest.approx([0.8, 1.25])
    assert pipeline_config.smallest_anchor(kind, generator) == pytest.approx(
        tuple(0.5 * side for side in smallest))


def test_num_steps_derived_too_small_for_the_warmup_is_a_clear_error(tmp_path):
    data_dir = write_convert_output(tmp_path / "data", report=data_report(BLOOD))
    with pytest.raises(ParamsError, match=r"warmup_steps must be smaller than train.num_steps "
                                          r"\(2\).*num_steps 2: 1 epochs x 20 train images"):
        pipeline_config.render(ModelParams(), TrainParams(num_steps=0, epochs=1, batch_size=16),
                               data_dir)
