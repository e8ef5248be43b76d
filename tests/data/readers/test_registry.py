"""The reader registry: data.format allows exactly its formats, the driver and CLI use it."""
from __future__ import annotations

import argparse
import typing
from pathlib import Path

import pytest

from pipeline.core.errors import PipelineError
from pipeline.core.params import DataParams
from pipeline.core.records import ImageRecord
from pipeline.data import conversion
from pipeline.data.readers.registry import READERS, reader
from pipeline.stages import convert


def allowed_formats() -> set[str]:
    """The values the ``data.format`` field declares (a Literal, in dataclass or pydantic)."""
    return set(typing.get_args(typing.get_type_hints(DataParams)["format"]))


def test_data_format_allows_exactly_the_registered_readers() -> None:
    assert allowed_formats() == set(READERS)


def test_cli_format_choices_are_the_registered_readers() -> None:
    parser = argparse.ArgumentParser()
    convert.add_arguments(parser)
    (action,) = [a for a in parser._actions if a.dest == "format"]
    assert set(action.choices) == set(READERS)


def test_driver_reads_with_the_registered_reader(tmp_path: Path, monkeypatch) -> None:
    seen = []

    def fake(root, data, images=None, annotations=None):
        seen.append((root, data.format, images, annotations))
        return [ImageRecord("x", str(root / "x.jpg"), 1, 1, "train")]

    monkeypatch.setitem(READERS, "voc", fake)
    records = conversion.read_dataset(DataParams(format="voc", root=str(tmp_path)), None, "a")
    assert [r.image_id for r in records] == ["x"]
    assert seen == [(tmp_path, "voc", None, "a")]


def test_unknown_format_is_a_one_line_error() -> None:
    with pytest.raises(PipelineError, match=r"unknown data.format 'vhs'; allowed: \["):
        reader("vhs")
