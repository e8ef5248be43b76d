"""Class names <-> integer ids, and the OD API's ``label_map.pbtxt`` (StringIntLabelMap).

Ids run 1..N: the OD API reserves 0 for the background class. The order is ``data.classes``
when it is given (so ids stay stable when a dataset grows), else the sorted names found.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from pipeline.core.errors import PipelineError
from pipeline.core.records import ImageRecord

#: class name -> id (1..N), in id order.
LabelMap = Mapping[str, int]


def build_label_map(classes: Sequence[str], records: Iterable[ImageRecord]) -> dict[str, int]:
    """Ids for ``classes`` in the given order, or for the sorted labels found in ``records``."""
    return label_map_for(classes, {obj.label for record in records for obj in record.objects})


def label_map_for(classes: Sequence[str], labels: Iterable[str]) -> dict[str, int]:
    """Ids for ``classes`` in the given order, or (none given) for the sorted ``labels``."""
    if classes:
        duplicates = sorted(name for name, n in Counter(classes).items() if n > 1)
        if duplicates:
            raise PipelineError(f"data.classes has duplicate names: {duplicates}")
        names = list(classes)
    else:
        names = sorted(set(labels))
    if not names:
        raise PipelineError("no classes: data.classes is empty and the dataset has no objects")
    return {name: index for index, name in enumerate(names, start=1)}


def label_map_text(label_map: LabelMap) -> str:
    """The label map in the OD API's text format (``item { id: 1 name: 'x' }``)."""
    from google.protobuf import text_format

    proto = _proto_module().StringIntLabelMap()
    for name, class_id in sorted(label_map.items(), key=lambda item: item[1]):
        proto.item.add(id=class_id, name=name)
    return text_format.MessageToString(proto)


def write_label_map(label_map: LabelMap, path: Path) -> None:
    """Write ``label_map.pbtxt`` (see :func:`label_map_text`)."""
    Path(path).write_text(label_map_text(label_map), encoding="utf-8")


def read_label_map(path: Path) -> dict[str, int]:
    """Read a ``label_map.pbtxt`` back into ``{name: id}``.

    PipelineError (one line, naming the file) when it is unreadable, does not parse, or has
    duplicate ids or names: two classes would silently share an id or a name otherwise.
    """
    from google.protobuf import text_format

    try:
        text = Path(path).read_text(encoding="utf-8")
        proto = text_format.Parse(text, _proto_module().StringIntLabelMap())
    except (OSError, UnicodeDecodeError, text_format.ParseError) as err:
        raise PipelineError(f"{path} is not a valid label map: "
                            f"{' '.join(str(err).split())}") from None
    for key in ("id", "name"):
        values = Counter(getattr(item, key) for item in proto.item)
        duplicates = sorted(value for value, n in values.items() if n > 1)
        if duplicates:
            raise PipelineError(f"label map {path} has duplicate {key}s: {duplicates}")
    return {item.name: item.id for item in proto.item}


def _proto_module():
    # The protobuf descriptor shim must be installed before any object_detection import; only
    # that one (not compat.apply(), which imports TensorFlow: seconds the driver does not need).
    from pipeline.core import compat

    compat.install_proto_descriptor_loader()
    from object_detection.protos import string_int_label_map_pb2

    return string_int_label_map_pb2
