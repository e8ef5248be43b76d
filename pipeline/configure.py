"""Stage ``configure``: render ``pipeline.config`` from a template in ``configs/`` and params.

The template is parsed into the OD API's ``TrainEvalPipelineConfig`` and edited field by field
(never by text substitution); the written file is parsed back as the proof that it is valid.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from pipeline import compat, tracking
from pipeline.errors import PipelineError
from pipeline.params import CONFIGS_DIR, ModelParams, Params, TrainParams

log = logging.getLogger(__name__)

#: Warmup starts from this fraction of the peak learning rate.
WARMUP_START_FRACTION = 0.1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=Path("data/tfrecords"),
                        help="convert output: shards, label_map.pbtxt, data_report.json")
    parser.add_argument("--output", type=Path, default=Path("models/pipeline.config"),
                        help="pipeline.config to write (default: models/pipeline.config)")


def run(args: argparse.Namespace, params: Params) -> None:
    config = render(params.model, params.train, args.data)
    write_config(config, args.output)
    log.info("wrote %s (%s, %d classes)", args.output, params.model.name, num_classes(config))
    with tracking.start_run(params.mlflow, "configure") as mlflow:
        mlflow.log_params(tracking.flatten_params(params, ("model", "train")))
        mlflow.log_artifact(str(args.output))


def template_path(model_name: str) -> Path:
    return CONFIGS_DIR / f"{model_name}.config"


def load_template(model_name: str):
    """Parse ``configs/<model_name>.config`` into a ``TrainEvalPipelineConfig``."""
    compat.apply()
    from google.protobuf import text_format
    from object_detection.protos import pipeline_pb2

    config = pipeline_pb2.TrainEvalPipelineConfig()
    try:
        text_format.Merge(template_path(model_name).read_text(), config)
    except text_format.ParseError as err:
        raise PipelineError(f"template {template_path(model_name)} does not parse: {err}") from err
    return config


def render(model: ModelParams, train: TrainParams, data_dir: Path):
    """The template for ``model.name`` with classes, sizes, optimiser and inputs filled in."""
    config = load_template(model.name)
    label_map = data_dir / "label_map.pbtxt"
    set_num_classes(config, count_label_map_items(label_map))
    set_image_size(config, model.image_size)
    set_training(config, train, max_objects_in_data(data_dir))
    set_inputs(config, data_dir, label_map)
    return config


def count_label_map_items(path: Path) -> int:
    compat.apply()
    from object_detection.utils import label_map_util

    if not path.is_file():
        raise PipelineError(f"label map not found: {path} (run the convert stage first)")
    count = len(label_map_util.load_labelmap(str(path)).item)
    if count == 0:
        raise PipelineError(f"label map {path} has no classes")
    return count


def max_objects_in_data(data_dir: Path) -> int:
    """Largest number of objects in one image, from the convert stage's data report."""
    report = data_dir / "data_report.json"
    if not report.is_file():
        return 0
    return int(json.loads(report.read_text()).get("max_objects_per_image", 0))


def meta_architecture(config):
    """The model's oneof message (``ssd``, ``faster_rcnn``, ...)."""
    return getattr(config.model, config.model.WhichOneof("model"))


def num_classes(config) -> int:
    return meta_architecture(config).num_classes


def set_num_classes(config, count: int) -> None:
    meta_architecture(config).num_classes = count


def set_image_size(config, size: int) -> None:
    resizer = meta_architecture(config).image_resizer
    kind = resizer.WhichOneof("image_resizer_oneof")
    if kind == "fixed_shape_resizer":
        resizer.fixed_shape_resizer.height = size
        resizer.fixed_shape_resizer.width = size
    elif kind == "keep_aspect_ratio_resizer":
        resizer.keep_aspect_ratio_resizer.min_dimension = size
        resizer.keep_aspect_ratio_resizer.max_dimension = size
    else:
        raise PipelineError(f"template's image resizer {kind!r} has no size this stage can set")


def set_training(config, train: TrainParams, max_objects: int) -> None:
    """Batch size, steps, learning-rate schedule and box limit."""
    tc = config.train_config
    tc.batch_size = train.batch_size
    tc.num_steps = train.num_steps
    # Images with more boxes than this are silently truncated by the OD API: never fewer than
    # the dataset's busiest image.
    tc.max_number_of_boxes = max(train.max_boxes, max_objects)
    set_learning_rate(tc.optimizer, train)


def set_learning_rate(optimizer, train: TrainParams) -> None:
    kind = optimizer.WhichOneof("optimizer")
    schedule = getattr(optimizer, kind).learning_rate
    schedule_kind = schedule.WhichOneof("learning_rate")
    if schedule_kind == "cosine_decay_learning_rate":
        cosine = schedule.cosine_decay_learning_rate
        cosine.learning_rate_base = train.learning_rate
        cosine.total_steps = train.num_steps
        cosine.warmup_steps = train.warmup_steps
        cosine.warmup_learning_rate = train.learning_rate * WARMUP_START_FRACTION
    elif schedule_kind == "constant_learning_rate":
        schedule.constant_learning_rate.learning_rate = train.learning_rate
    else:
        raise PipelineError(
            f"template's learning rate schedule {schedule_kind!r} is not supported; "
            "use cosine_decay_learning_rate or constant_learning_rate"
        )


def set_inputs(config, data_dir: Path, label_map: Path) -> None:
    """Point the train reader at the train shards and the eval reader at the val shards."""
    readers = [("train", config.train_input_reader)]
    readers += [("val", reader) for reader in config.eval_input_reader]
    for split, reader in readers:
        reader.label_map_path = str(label_map)
        paths = reader.tf_record_input_reader.input_path
        del paths[:]
        paths.append(str(data_dir / f"{split}.tfrecord-*"))


def _serialize(config) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(config)


def write_config(config, path: Path) -> None:
    """Write the config as text, then parse it back as the OD API does (validation)."""
    compat.apply()
    from object_detection.utils import config_util

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(_serialize(config))
    try:
        config_util.get_configs_from_pipeline_file(str(tmp))
    except Exception as err:  # any parse failure means the rendered file is unusable
        tmp.unlink()
        raise PipelineError(f"rendered pipeline.config does not parse: {err}") from err
    os.replace(tmp, path)
