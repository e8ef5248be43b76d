"""The test split as the report reads it: ``test.tfrecord-*`` shards, their ground truth, the
label map, and the checks that keep COCO scores honest."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import tensorflow as tf

from pipeline.core import layout
from pipeline.core.errors import PipelineError
from pipeline.data import labelmap
from pipeline.evaluation.coco import GroundTruthImage


@dataclass(frozen=True)
class Sample:
    """One test record: the raw tf.Example, its parsed features and its ground truth."""

    serialized: bytes  # the whole tf.Example (input of tf_example models)
    features: dict[str, np.ndarray]
    truth: GroundTruthImage

    @property
    def encoded(self) -> bytes:
        """The encoded (JPEG/PNG) image."""
        return self.features["image/encoded"]


def find_test_records(data_dir: Path) -> list[str]:
    """The sorted ``test.tfrecord-*`` shards in ``data_dir``; PipelineError if there are none."""
    if not data_dir.is_dir():
        raise PipelineError(f"data directory {data_dir} not found; run the convert stage first")
    files = layout.record_files(data_dir, "test")
    if not files:
        raise PipelineError(f"no test records ({layout.shard_pattern('test')}) in {data_dir}; "
                            "run the convert stage with a non-empty test split")
    return files


def read_label_map(path: Path) -> dict[int, str]:
    """``{id: name}`` from an OD API ``label_map.pbtxt``; PipelineError if missing or invalid."""
    if not path.is_file():
        raise PipelineError(f"label map {path} not found; run the convert stage first")
    categories = {cid: name for name, cid in labelmap.read_label_map(path).items()}
    if not categories:
        raise PipelineError(f"label map {path} has no items")
    return categories


def check_class_ids(truths: list[GroundTruthImage], categories: dict[int, str]) -> None:
    """PipelineError when the ground truth uses class ids that the label map lacks."""
    # COCOeval silently ignores annotations of unknown categories; that would inflate scores.
    used = {int(c) for t in truths for c in t.classes}
    unknown = sorted(used - set(categories))
    if unknown:
        raise PipelineError(f"test records use class id(s) {unknown} that "
                            f"{layout.LABEL_MAP} lacks")


def read_samples(files: list[str]) -> Iterator[Sample]:
    """Yield the test images with their ground truth; COCO image ids are 1, 2, ... in order."""
    # No prefetching or autotuning: background tf.data threads would share the CPU with the
    # timed model calls and skew the latency figures; reading a record is cheap.
    options = tf.data.Options()
    options.autotune.enabled = False
    dataset = tf.data.TFRecordDataset(files).map(_parse).with_options(options)
    try:
        for image_id, (serialized, features) in enumerate(dataset, start=1):
            features = {k: v.numpy() for k, v in features.items()}
            yield Sample(serialized.numpy(), features, _truth(image_id, features))
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as err:
        raise PipelineError(f"cannot read test records {files}: {err.message}") from None


def _features() -> dict[str, Any]:
    return {
        "image/encoded": tf.io.FixedLenFeature([], tf.string),
        "image/height": tf.io.FixedLenFeature([], tf.int64),
        "image/width": tf.io.FixedLenFeature([], tf.int64),
        "image/filename": tf.io.FixedLenFeature([], tf.string, default_value=""),
        "image/source_id": tf.io.FixedLenFeature([], tf.string, default_value=""),
        **{f"image/object/bbox/{k}": tf.io.VarLenFeature(tf.float32)
           for k in ("ymin", "xmin", "ymax", "xmax")},
        "image/object/class/label": tf.io.VarLenFeature(tf.int64),
        "image/object/is_crowd": tf.io.VarLenFeature(tf.int64),
        "image/object/area": tf.io.VarLenFeature(tf.float32),
    }


def _parse(serialized: tf.Tensor) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
    parsed = tf.io.parse_single_example(serialized, _features())
    dense = {k: tf.sparse.to_dense(v) if isinstance(v, tf.SparseTensor) else v
             for k, v in parsed.items()}
    return serialized, dense


def _truth(image_id: int, f: dict[str, np.ndarray]) -> GroundTruthImage:
    boxes = np.stack([f[f"image/object/bbox/{k}"] for k in ("ymin", "xmin", "ymax", "xmax")], 1)
    count = len(boxes)
    crowd, area = f["image/object/is_crowd"], f["image/object/area"]
    name = f["image/filename"].decode() or f["image/source_id"].decode() or str(image_id)
    return GroundTruthImage(
        image_id=image_id, file_name=name,
        width=int(f["image/width"]), height=int(f["image/height"]),
        boxes=boxes, classes=f["image/object/class/label"],
        # Optional keys: absent -> not crowd, area from the box.
        is_crowd=crowd if len(crowd) == count else None,
        area=area if len(area) == count else None,
    )
