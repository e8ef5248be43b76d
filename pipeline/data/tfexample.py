"""The ``tf.train.Example`` layout the OD API's ``TfExampleDecoder`` reads.

Boxes are stored normalised to [0, 1] (pixel / image width or height); ``image/object/area``
stays in pixels because COCO evaluation uses it for its small/medium/large buckets.

The message classes are built with protobuf from TensorFlow's own schema
(``tensorflow/core/example/{example,feature}.proto``, the same field numbers and types, so the
bytes are what ``tf.train.Example`` writes and reads) in a private descriptor pool. Importing
TensorFlow just for these classes costs about 5 s of CPU in the driver and in every Beam worker;
the conversion needs nothing else from it. The private pool never clashes with TensorFlow's
classes when both are loaded (tests compare the two).
"""
from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from pipeline.core.records import ImageRecord

_PROTO_FILE = "tensorflow/core/example/example.proto"
_F = descriptor_pb2.FieldDescriptorProto


def build_example(record: ImageRecord, encoded_jpeg: bytes, label_map: Mapping[str, int],
                  jpeg_sha256: str | None = None) -> Any:
    """The ``tf.train.Example`` of ``record`` (size and boxes already checked) and its JPEG.

    Every object's label must be in ``label_map``: the caller drops unknown labels first.
    ``jpeg_sha256`` is the JPEG's sha256 when the caller already has it (computed otherwise).
    """
    objects = record.objects
    width, height = float(record.width), float(record.height)
    features = {
        "image/height": _ints([record.height]),
        "image/width": _ints([record.width]),
        "image/filename": _bytes([_file_name(record)]),
        "image/source_id": _bytes([record.image_id]),
        "image/key/sha256": _bytes([jpeg_sha256 or hashlib.sha256(encoded_jpeg).hexdigest()]),
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
    classes = example_classes()
    return classes["Example"](features=classes["Features"](feature=features))


@functools.cache
def example_classes() -> dict[str, Any]:
    """``{name: message class}`` for Example, Features, Feature, BytesList, FloatList, Int64List."""
    proto = descriptor_pb2.FileDescriptorProto(name=_PROTO_FILE, package="tensorflow",
                                               syntax="proto3")
    for name, kind in (("BytesList", _F.TYPE_BYTES), ("FloatList", _F.TYPE_FLOAT),
                       ("Int64List", _F.TYPE_INT64)):
        _message(proto, name, [("value", 1, kind, _F.LABEL_REPEATED, "")])
    feature = _message(proto, "Feature", [
        (name, number, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, f".tensorflow.{type_name}")
        for number, (name, type_name) in enumerate(
            [("bytes_list", "BytesList"), ("float_list", "FloatList"),
             ("int64_list", "Int64List")], start=1)])
    feature.oneof_decl.add(name="kind")
    for field in feature.field:
        field.oneof_index = 0
    features = _message(proto, "Features", [
        ("feature", 1, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, ".tensorflow.Features.FeatureEntry")])
    entry = _message(features, "FeatureEntry", [
        ("key", 1, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
        ("value", 2, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".tensorflow.Feature")], nested=True)
    entry.options.map_entry = True
    _message(proto, "Example", [
        ("features", 1, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".tensorflow.Features")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    classes = message_factory.GetMessageClassesForFiles([_PROTO_FILE], pool)
    return {full_name.split(".")[-1]: cls for full_name, cls in classes.items()}


def _message(parent: Any, name: str, fields: list[tuple], nested: bool = False) -> Any:
    message = (parent.nested_type if nested else parent.message_type).add(name=name)
    for field_name, number, kind, label, type_name in fields:
        field = message.field.add(name=field_name, number=number, type=kind, label=label)
        if type_name:
            field.type_name = type_name
    return message


def _file_name(record: ImageRecord) -> str:
    return record.image_path.replace("\\", "/").rsplit("/", 1)[-1]


def _ints(values: Iterable[int]) -> Any:
    classes = example_classes()
    return classes["Feature"](int64_list=classes["Int64List"](value=list(values)))


def _floats(values: Iterable[float]) -> Any:
    classes = example_classes()
    return classes["Feature"](float_list=classes["FloatList"](value=list(values)))


def _bytes(values: Iterable[str | bytes]) -> Any:
    encoded = [v.encode("utf-8") if isinstance(v, str) else v for v in values]
    classes = example_classes()
    return classes["Feature"](bytes_list=classes["BytesList"](value=encoded))
