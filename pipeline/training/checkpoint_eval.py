"""COCO evaluation of one training checkpoint on the val split, with the OD API's own eval loop.

This is what ``model_main_tf2 --checkpoint_dir`` does for each new checkpoint, minus the waiting:
the train stage calls it between training segments, so evaluation never competes with training
for the CPU/GPU. Metrics are also written as TF event scalars to ``summary_dir`` (TensorBoard's
``eval`` curves). A progress bar counts the batches evaluated (on a terminal only: its total
costs one reading of the val records).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pipeline.core import logs, progress

#: ``train.best_metric`` -> (OD API metric name, True when higher is better)
METRICS = {
    "map": ("DetectionBoxes_Precision/mAP", True),
    "map_50": ("DetectionBoxes_Precision/mAP@.50IOU", True),
    "map_75": ("DetectionBoxes_Precision/mAP@.75IOU", True),
    "mar_100": ("DetectionBoxes_Recall/AR@100", True),
    "val_loss": ("Loss/total_loss", False),
}


def evaluate_checkpoint(config: Path, checkpoint: str, summary_dir: Path) -> dict[str, float]:
    """COCO metrics (and val losses) of ``checkpoint`` on the config's eval input (one epoch)."""
    import tensorflow as tf
    from object_detection import inputs, model_lib_v2
    from object_detection.builders import model_builder
    from object_detection.utils import config_util

    configs = config_util.get_configs_from_pipeline_file(str(config))
    configs = config_util.merge_external_params_with_configs(
        configs, None, kwargs_dict={"eval_num_epochs": 1})
    # Side-by-side images cost more than the metrics on CPU; the scalars are what we keep.
    configs["eval_config"].num_visualizations = 0
    model = model_builder.build(model_config=configs["model"], is_training=True)
    strategy = tf.distribute.get_strategy()
    dataset = strategy.experimental_distribute_dataset(inputs.eval_input(
        eval_config=configs["eval_config"], eval_input_config=configs["eval_input_configs"][0],
        model_config=configs["model"], model=model))
    step = tf.Variable(0, trainable=False, dtype=tf.int64)
    tf.train.Checkpoint(step=step, model=model).restore(checkpoint).expect_partial()
    writer = tf.summary.create_file_writer(str(summary_dir))
    batch_size = configs["eval_config"].batch_size
    total = eval_batches(configs) if progress.shown() else None
    with writer.as_default(), progress.Bar(
            dataset, desc=f"evaluate {Path(checkpoint).name}", total=total, leave=False,
            unit="img" if batch_size == 1 else "batch") as batches:
        with logs.stack_prints():  # pycocotools prints its progress and table to stdout
            metrics = model_lib_v2.eager_eval_loop(model, configs, batches, global_step=step)
    writer.flush()
    return {name: float(value) for name, value in metrics.items()}


def eval_batches(configs: dict[str, Any]) -> int:
    """Batches in one epoch of the eval input of ``configs`` (its records counted)."""
    import tensorflow as tf

    reader = configs["eval_input_configs"][0].tf_record_input_reader
    files = [name for pattern in reader.input_path for name in tf.io.gfile.glob(pattern)]
    return math.ceil(progress.count_records(files) / max(1, configs["eval_config"].batch_size))


def summary(metrics: dict[str, float]) -> dict[str, float]:
    """The headline metrics under their short names (``map``, ``map_50``, ..., ``val_loss``)."""
    return {short: metrics[name] for short, (name, _) in METRICS.items() if name in metrics}


def is_better(metric: str, candidate: dict[str, float], best: dict[str, float] | None) -> bool:
    """Whether ``candidate`` beats ``best`` on ``metric`` (ties keep the earlier checkpoint)."""
    name, higher = METRICS[metric]
    if best is None:
        return True
    return candidate[name] > best[name] if higher else candidate[name] < best[name]
