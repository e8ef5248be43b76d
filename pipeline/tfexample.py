"""The ``tf.train.Example`` layout the OD API's ``TfExampleDecoder`` reads.

Boxes are stored normalised to [0, 1] (pixel / image width or height); ``image/object/area``
stays in pixels because COCO evaluation uses it for its small/medium/large buckets.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

from tensorflow.core.example import example_pb2, feature_pb2

from pipeline.records import ImageRecord


def build_example(
    record: ImageRecord, encoded_jpeg: bytes, label_map: Mapping[str, int]
) -> example_pb2.Example:
    """The ``tf.train.Example`` of ``record`` (size and boxes already checked) and its JPEG.

    Every object's label must be in ``label_map``: the caller drops unknown labels first.
    """
    objects = record.objects
    width, height = float(record.width), float(record.height)
    features = {
        "image/height": _ints([record.height]),
        "image/width": _ints([record.width]),
        "image/filename": _bytes([_file_name(record)]),
        "image/source_id": _bytes([record.image_id]),
        "image/key/sha256": _bytes([hashlib.sha256(encoded_jpeg).hexdigest()]),
        "image/encoded": _bytes([encoded_jpeg]),
        "image/format": _bytes(["jpeg"]),
        "image/object/bbox/xmin": _floats(o.xmin / width for o in objects),
        "image/object/bbox/xmax": _floats(o.xmax / width for o in objects),
        "image/object/bbox/ymin": _floats(o.ymin / height for o in objects),
        "image/object/bbox/ymax": _floats(o.ymax / height for o in objects),
        "image/object/class/text": _bytes(o.label for o in objects),
        "image/object/class/label": _ints(label_map[o.label] for o in objects),
        "image/object/difficult": _ints(int(o.difficult) for o in objects),
        "image/object/truncated": _ints(int(o.truncated) for o in objects),
        "image/object/is_crowd": _ints(int(o.is_crowd) for o in objects),
        "image/object/area": _floats(o.area for o in objects),
    }
    return example_pb2.Example(features=feature_pb2.Features(feature=features))


def _file_name(record: ImageRecord) -> str:
    return record.image_path.replace("\\", "/").rsplit("/", 1)[-1]


def _ints(values: Iterable[int]) -> feature_pb2.Feature:
    return feature_pb2.Feature(int64_list=feature_pb2.Int64List(value=list(values)))


def _floats(values: Iterable[float]) -> feature_pb2.Feature:
    return feature_pb2.Feature(float_list=feature_pb2.FloatList(value=list(values)))


def _bytes(values: Iterable[str | bytes]) -> feature_pb2.Feature:
    encoded = [v.encode("utf-8") if isinstance(v, str) else v for v in values]
    return feature_pb2.Feature(bytes_list=feature_pb2.BytesList(value=encoded))
