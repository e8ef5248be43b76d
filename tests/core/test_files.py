"""pipeline.core.files: single files are replaced whole or not at all."""
import json

import pytest

from pipeline.core import files


def test_write_json_is_atomic_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "out" / "metrics.json"
    files.write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError):
        files.write_json_atomic(path, {"a": object()})  # not serialisable: old file must survive
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]


def test_a_failed_atomic_file_block_keeps_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "pipeline.config"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with files.atomic_file(path) as temporary:
            temporary.write_text("half of the new")
            raise RuntimeError("validation failed")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["pipeline.config"]


def test_atomic_file_publishes_the_new_content(tmp_path):
    path = tmp_path / "a" / "b.txt"
    files.write_text_atomic(path, "new\n")
    assert path.read_text() == "new\n"
    assert [p.name for p in path.parent.iterdir()] == ["b.txt"]
