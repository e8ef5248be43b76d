"""pipeline.data.labelmap: order, round trip, the OD API reads it, malformed files."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.core.errors import PipelineError
from pipeline.core.records import ImageRecord, ObjectAnnotation
from pipeline.data.labelmap import build_label_map, label_map_text, read_label_map, write_label_map


def test_label_map_order_and_round_trip(tmp_path: Path) -> None:
    record = ImageRecord("a", "/a.jpg", 10, 10, "train", (ObjectAnnotation("zebra", 0, 0, 1, 1),
                                                          ObjectAnnotation("ant", 0, 0, 1, 1)))
    assert build_label_map((), [record]) == {"ant": 1, "zebra": 2}
    label_map = build_label_map(("zebra", "it's"), [record])
    assert label_map == {"zebra": 1, "it's": 2}
    assert "item {" in label_map_text(label_map) and "id: 1" in label_map_text(label_map)
    write_label_map(label_map, tmp_path / "label_map.pbtxt")
    assert read_label_map(tmp_path / "label_map.pbtxt") == label_map


def test_label_map_is_read_by_the_od_api(tmp_path: Path) -> None:
    from pipeline.core import compat

    compat.apply()
    from object_detection.utils import label_map_util

    write_label_map({"b": 1, "a": 2}, tmp_path / "lm.pbtxt")
    assert label_map_util.get_label_map_dict(str(tmp_path / "lm.pbtxt")) == {"b": 1, "a": 2}


def test_label_map_rejects_duplicates_and_no_classes() -> None:
    with pytest.raises(PipelineError, match="duplicate"):
        build_label_map(("a", "b", "a"), [])
    with pytest.raises(PipelineError, match="no classes"):
        build_label_map((), [])


@pytest.mark.parametrize("text, message", [
    ("item { id: 1 name: 'a' ", "is not a valid label map"),
    ("item { id: 1 name: 'a' } item { id: 1 name: 'b' }", "has duplicate ids: [1]"),
    ("item { id: 1 name: 'a' } item { id: 2 name: 'a' }", "has duplicate names: ['a']"),
])
def test_malformed_label_map_is_a_one_line_error_naming_the_file(tmp_path: Path, text,
                                                                 message) -> None:
    path = tmp_path / "label_map.pbtxt"
    path.write_text(text)
    with pytest.raises(PipelineError) as raised:
        read_label_map(path)
    assert str(raised.value).startswith(str(path)) or f"label map {path}" in str(raised.value)
    assert message in str(raised.value) and "\n" not in str(raised.value)
