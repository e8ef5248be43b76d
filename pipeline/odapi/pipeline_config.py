"""pipeline.config from a template in ``configs/`` and params: load, edit, write.

The template is parsed into the OD API's ``TrainEvalPipelineConfig`` and edited field by field
(never by text substitution); the written file is parsed back as the proof that it is valid.
What is set: classes and label map (from the convert output), input size, anchors, batch size,
steps, the learning rate scaled linearly with the batch size from the template's reference (see
configs/models.yaml; lower, with the template's own warmup, when fine-tuning), warmup, the
backbone variables to freeze (``train.freeze_backbone_steps``), augmentations, box limit,
post-processing, the checkpoint to fine-tune from and the TFRecord paths. Input size, anchors,
box limit and steps are derived from the data report unless pinned in params.yaml
(pipeline/odapi/data_defaults.py).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from pipeline.core import compat, files, layout
from pipeline.core.errors import ParamsError, PipelineError
from pipeline.core.params import ModelParams, TrainParams
from pipeline.odapi import checkpoints, data_defaults, pretrained
from pipeline.odapi import templates as zoo
from pipeline.odapi.augmentations import NO_AUGMENTATION

#: Warmup starts from this fraction of the peak learning rate.
WARMUP_START_FRACTION = 0.1


def resolved_values(config, model: ModelParams, train: TrainParams) -> dict:
    """What the params resolved to in the rendered config (logged next to the params)."""
    tc = config.train_config
    return {
        "resolved.image_size": image_size(config),
        "resolved.learning_rate": peak_learning_rate(model, train),
        "resolved.max_number_of_boxes": tc.max_number_of_boxes,
        "resolved.fine_tune_checkpoint": tc.fine_tune_checkpoint or "none",
    }


def load_template(model_name: str):
    """Parse ``configs/<model_name>.config`` into a ``TrainEvalPipelineConfig``."""
    compat.apply()
    from google.protobuf import text_format
    from object_detection.protos import pipeline_pb2

    path = zoo.template_path(model_name)
    config = pipeline_pb2.TrainEvalPipelineConfig()
    try:
        text_format.Merge(path.read_text(), config)
    except text_format.ParseError as err:
        raise PipelineError(f"template {path} does not parse: {err}") from err
    return config


def render(model: ModelParams, train: TrainParams, data_dir: Path,
           pretrained_dir: Path | None = None):
    """The template for ``model.name`` with classes, sizes, optimiser and inputs filled in
    (:func:`render_with_defaults` without the defaults)."""
    return render_with_defaults(model, train, data_dir, pretrained_dir)[0]


def render_with_defaults(model: ModelParams, train: TrainParams, data_dir: Path,
                         pretrained_dir: Path | None = None):
    """(config, :class:`data_defaults.Defaults`): the template for ``model.name`` with classes,
    sizes, anchors, optimiser and inputs filled in, and the values derived from the data report
    (or pinned) that it carries.

    The checkpoint to fine-tune from is the one in ``pretrained_dir`` (the pretrained stage's
    output) when that folder exists, else ``model.checkpoint`` resolved here."""
    config = load_template(model.name)
    label_map = data_dir / layout.LABEL_MAP
    set_num_classes(config, count_label_map_items(label_map))
    defaults = data_defaults.derive(read_data_report(data_dir), template_facts(config, model.name),
                                    model, train, is_fine_tuning(model))
    train = with_steps(train, defaults.num_steps)
    set_image_size(config, defaults.image_size.value)
    set_anchors(config, defaults.aspect_ratios.value, defaults.anchor_factor.value)
    set_training(config, train, defaults.max_boxes.value)
    set_learning_rate(config.train_config.optimizer, train, peak_learning_rate(model, train),
                      warmup_schedule(model, train))
    set_frozen_backbone(config, model, train)
    set_augmentations(config, train.augmentations)
    set_post_processing(config, model)
    set_fine_tune_checkpoint(config, pretrained.fine_tune_prefix(
        model, checkpoints.architecture_of(config), pretrained_dir))
    set_inputs(config, data_dir, label_map)
    return config, defaults


def with_steps(train: TrainParams, steps: data_defaults.Choice) -> TrainParams:
    """``train`` with the resolved number of steps, checked again (warmup, freezing)."""
    try:
        return dataclasses.replace(train, num_steps=steps.value)
    except ParamsError as err:
        raise ParamsError(f"{err} ({steps.reason})") from None


def peak_learning_rate(model: ModelParams, train: TrainParams) -> float:
    """``train.learning_rate`` (0 = the template's reference, times its
    ``finetune_learning_rate_factor`` when fine-tuning) scaled linearly from the template's
    reference batch size to ``train.batch_size`` (Goyal et al., 2017)."""
    spec = zoo.spec_for(model.name)
    factor = spec.finetune_learning_rate_factor if is_fine_tuning(model) else 1.0
    base = train.learning_rate or spec.reference_learning_rate * factor
    return base * train.batch_size / spec.reference_batch_size


def is_fine_tuning(model: ModelParams) -> bool:
    return model.checkpoint != "none"


def warmup_schedule(model: ModelParams, train: TrainParams) -> tuple[int, float]:
    """(warmup steps, warmup start as a fraction of the peak). Fine-tuning: the template's, from
    its zoo config (warmup_steps / total_steps of ``train.num_steps``, warmup / base learning
    rate; configs/models.yaml); from scratch: ``train.warmup_steps`` from 0.1 x the peak."""
    if not is_fine_tuning(model):
        return train.warmup_steps, WARMUP_START_FRACTION
    spec = zoo.spec_for(model.name)
    steps = round(spec.finetune_warmup_fraction * train.num_steps)
    return min(steps, train.num_steps - 1), spec.finetune_warmup_start_fraction


def set_frozen_backbone(config, model: ModelParams, train: TrainParams) -> None:
    """``freeze_variables`` = the template's backbone regexes when ``train.freeze_backbone_steps``
    is not 0; the train stage freezes them for the first K steps, or throughout for -1
    (pipeline/odapi/freezing.py: the OD API's TF2 loop ignores the field)."""
    tc = config.train_config
    del tc.freeze_variables[:]
    if train.freeze_backbone_steps == 0:
        return
    if not is_fine_tuning(model):
        raise PipelineError("train.freeze_backbone_steps needs pretrained weights to freeze: set "
                            "model.checkpoint (zoo or a path) or train.freeze_backbone_steps: 0")
    spec = zoo.spec_for(model.name)
    if not spec.backbone_variables:
        raise PipelineError(f"template {model.name!r} names no backbone_variables in "
                            "configs/models.yaml: train.freeze_backbone_steps cannot apply")
    tc.freeze_variables.extend(spec.backbone_variables)


def count_label_map_items(path: Path) -> int:
    compat.apply()
    from pipeline.data import labelmap

    if not path.is_file():
        raise PipelineError(f"label map not found: {path} (run the convert stage first)")
    count = len(labelmap.read_label_map(path))  # one-line error when malformed or duplicated
    if count == 0:
        raise PipelineError(f"label map {path} has no classes")
    return count


def read_data_report(data_dir: Path) -> dict:
    """The convert stage's data report (``{}`` when there is none: the template's values)."""
    report = data_dir / layout.DATA_REPORT_JSON
    if not report.is_file():
        return {}
    try:
        return json.loads(report.read_text())
    except (OSError, ValueError) as err:
        raise PipelineError(f"data report {report} is not readable JSON ({err}): run the "
                            "convert stage again") from None


def template_facts(config, model_name: str) -> data_defaults.TemplateFacts:
    """What :mod:`data_defaults` needs of the template: its size, the sizes it may take, its
    resizer, anchors and box limit."""
    kind, generator = anchor_generator(config)
    return data_defaults.TemplateFacts(
        image_size=image_size(config), input_sizes=zoo.spec_for(model_name).input_sizes,
        keeps_aspect=_resizer(config)[0] == "keep_aspect_ratio_resizer",
        aspect_ratios=tuple(round(r, 4) for r in generator.aspect_ratios),
        smallest_anchor=smallest_anchor(kind, generator),
        max_boxes=config.train_config.max_number_of_boxes)


def anchor_generator(config):
    """(kind, message) of the model's anchor generator: SSD's ``anchor_generator`` or Faster
    R-CNN's ``first_stage_anchor_generator``."""
    arch = meta_architecture(config)
    is_two_stage = "first_stage_anchor_generator" in arch.DESCRIPTOR.fields_by_name
    holder = arch.first_stage_anchor_generator if is_two_stage else arch.anchor_generator
    kind = holder.WhichOneof("anchor_generator_oneof")
    if kind not in ANCHOR_GENERATORS:
        raise PipelineError(f"template's anchor generator {kind!r} is not supported; use one "
                            f"of {list(ANCHOR_GENERATORS)}")
    return kind, getattr(holder, kind)


#: The anchor generators configure can fit to the data.
ANCHOR_GENERATORS = ("multiscale_anchor_generator", "ssd_anchor_generator",
                     "grid_anchor_generator")
#: The OD API's ssd_anchor_generator puts a 0.1 x input size anchor in its lowest layer when
#: ``reduce_boxes_in_lowest_layer`` (its default), whatever ``min_scale`` says.
SSD_LOWEST_LAYER_SCALE = 0.1


def smallest_anchor(kind: str, generator) -> tuple[float, float]:
    """The side of the smallest square anchor: (pixels, fraction of the input size)."""
    if kind == "multiscale_anchor_generator":
        return generator.anchor_scale * 2.0 ** generator.min_level, 0.0
    if kind == "grid_anchor_generator":
        return min(generator.scales) * generator.height, 0.0
    lowest = generator.min_scale
    if generator.reduce_boxes_in_lowest_layer:
        lowest = min(lowest, SSD_LOWEST_LAYER_SCALE)
    return 0.0, lowest * generator.base_anchor_height


def set_anchors(config, aspect_ratios: tuple[float, ...], factor: float) -> None:
    """Anchor aspect ratios (width / height), and every anchor size times ``factor``."""
    kind, generator = anchor_generator(config)
    del generator.aspect_ratios[:]
    generator.aspect_ratios.extend(aspect_ratios)
    if factor == 1.0:
        return
    if kind == "multiscale_anchor_generator":
        generator.anchor_scale *= factor
    elif kind == "grid_anchor_generator":
        scales = [s * factor for s in generator.scales]
        del generator.scales[:]
        generator.scales.extend(scales)
    else:
        generator.base_anchor_height *= factor
        generator.base_anchor_width *= factor


def meta_architecture(config):
    """The model's oneof message (``ssd``, ``faster_rcnn``, ...)."""
    return getattr(config.model, config.model.WhichOneof("model"))


def num_classes(config) -> int:
    return meta_architecture(config).num_classes


def set_num_classes(config, count: int) -> None:
    meta_architecture(config).num_classes = count


def _resizer(config):
    resizer = meta_architecture(config).image_resizer
    kind = resizer.WhichOneof("image_resizer_oneof")
    if kind not in ("fixed_shape_resizer", "keep_aspect_ratio_resizer"):
        raise PipelineError(f"template's image resizer {kind!r} has no size this stage can set")
    return kind, getattr(resizer, kind)


def image_size(config) -> int:
    """The (square) model input size of a config."""
    kind, resizer = _resizer(config)
    return resizer.height if kind == "fixed_shape_resizer" else resizer.max_dimension


def set_image_size(config, size: int) -> None:
    """Model input size, and the output size of a crop-and-pad augmentation to match it."""
    kind, resizer = _resizer(config)
    if kind == "fixed_shape_resizer":
        resizer.height = resizer.width = size
    else:
        resizer.min_dimension = resizer.max_dimension = size
    for step in config.train_config.data_augmentation_options:
        if step.WhichOneof("preprocessing_step") == "random_scale_crop_and_pad_to_square":
            step.random_scale_crop_and_pad_to_square.output_size = size


def set_training(config, train: TrainParams, max_boxes: int) -> None:
    """Batch size, steps and box limit (the OD API drops the boxes of an image beyond it:
    data_defaults never makes it smaller than the data's busiest image)."""
    tc = config.train_config
    tc.batch_size = train.batch_size
    tc.num_steps = train.num_steps
    tc.max_number_of_boxes = max_boxes


def set_learning_rate(optimizer, train: TrainParams, peak: float,
                      warmup: tuple[int, float]) -> None:
    """Peak learning rate; a cosine schedule also gets ``warmup`` (steps, start as a fraction of
    the peak: :func:`warmup_schedule`) and total steps = num_steps."""
    warmup_steps, start = warmup
    kind = optimizer.WhichOneof("optimizer")
    schedule = getattr(optimizer, kind).learning_rate
    schedule_kind = schedule.WhichOneof("learning_rate")
    if schedule_kind == "cosine_decay_learning_rate":
        cosine = schedule.cosine_decay_learning_rate
        cosine.learning_rate_base = peak
        cosine.total_steps = train.num_steps
        cosine.warmup_steps = warmup_steps
        cosine.warmup_learning_rate = peak * start
    elif schedule_kind == "constant_learning_rate":
        schedule.constant_learning_rate.learning_rate = peak
    else:
        raise PipelineError(
            f"template's learning rate schedule {schedule_kind!r} is not supported; "
            "use cosine_decay_learning_rate or constant_learning_rate"
        )


def set_augmentations(config, names: tuple[str, ...]) -> None:
    """Replace the template's augmentations (names from pipeline/odapi/augmentations.py):
    () keeps them, ('none',) removes them all."""
    if not names:
        return
    steps = config.train_config.data_augmentation_options
    del steps[:]
    size = image_size(config)
    for name in names:
        if name == NO_AUGMENTATION:
            continue
        step = getattr(steps.add(), name)
        step.SetInParent()  # an empty message: the OD API's defaults for this augmentation
        if name == "random_scale_crop_and_pad_to_square":
            step.output_size = size


def set_post_processing(config, model: ModelParams) -> None:
    """Score threshold and NMS of the final detections (SSD, or Faster R-CNN's second stage)."""
    arch = meta_architecture(config)
    is_two_stage = "second_stage_post_processing" in arch.DESCRIPTOR.fields_by_name
    post = arch.second_stage_post_processing if is_two_stage else arch.post_processing
    nms = post.batch_non_max_suppression
    nms.score_threshold = model.score_threshold
    nms.iou_threshold = model.nms_iou_threshold
    nms.max_detections_per_class = model.max_detections
    nms.max_total_detections = model.max_detections


def set_fine_tune_checkpoint(config, prefix: str | None) -> None:
    """Fine-tune the whole detector from ``prefix``; None trains from scratch."""
    tc = config.train_config
    tc.ClearField("fine_tune_checkpoint")
    tc.ClearField("fine_tune_checkpoint_type")
    if prefix is None:
        return
    from object_detection.protos import train_pb2

    tc.fine_tune_checkpoint = prefix
    # The zoo's own configs say "classification" (their ImageNet backbones); a zoo *detection*
    # checkpoint restores the feature extractor and box predictor only as "detection".
    tc.fine_tune_checkpoint_type = "detection"
    tc.fine_tune_checkpoint_version = train_pb2.CheckpointVersion.V2


def set_inputs(config, data_dir: Path, label_map: Path) -> None:
    """Point the train reader at the train shards and the eval reader at the val shards."""
    readers = [("train", config.train_input_reader)]
    readers += [("val", reader) for reader in config.eval_input_reader]
    for split, reader in readers:
        reader.label_map_path = str(label_map)
        paths = reader.tf_record_input_reader.input_path
        del paths[:]
        paths.append(str(data_dir / layout.shard_pattern(split)))


def serialize(config) -> str:
    """The config as the text format of a pipeline.config file."""
    from google.protobuf import text_format

    return text_format.MessageToString(config)


def write_config(config, path: Path) -> None:
    """Write the config as text, then parse it back as the OD API does (validation)."""
    compat.apply()
    from object_detection.utils import config_util

    with files.atomic_file(path) as temporary:
        temporary.write_text(serialize(config))
        try:
            config_util.get_configs_from_pipeline_file(str(temporary))
        except Exception as err:  # any parse failure means the rendered file is unusable
            raise PipelineError(f"rendered pipeline.config does not parse: {err}") from err
