"""The dataset readers by format: ``data.format`` names one entry of :data:`READERS`.

A reader turns a dataset into :class:`~pipeline.core.records.ImageRecord` records, reading
metadata only (images are opened by the Beam stage). It may return a list or an iterator: the
driver consumes the records once, in order, without keeping them (VOC's reader streams them). Adding a format is one module in
``pipeline/data/readers/`` with a ``read_dataset`` function (the :class:`Reader` signature) plus one line in :data:`READERS`,
and its name in the ``data.format`` choices of ``pipeline/core/params.py`` (a test checks that
both name the same formats). The package's ``__init__`` stays empty: the VOC reader's parse
workers import their module alone.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from pipeline.core.errors import PipelineError
from pipeline.core.params import DataParams
from pipeline.core.records import ImageRecord
from pipeline.data.readers import coco, voc, yolo


class Reader(Protocol):
    """Records of every split of the dataset at ``root`` (or in the explicit ``images`` and
    ``annotations`` folders or file of a flat layout), read with ``data``'s policies."""

    def __call__(self, root: Path, data: DataParams, images: str | None = None,
                 annotations: str | None = None) -> Iterable[ImageRecord]: ...


#: The formats ``data.format`` may name, each with its reader.
READERS: dict[str, Reader] = {
    "voc": voc.read_dataset,
    "coco": coco.read_dataset,
    "yolo": yolo.read_dataset,
}


def reader(name: str) -> Reader:
    """The reader of format ``name``; PipelineError naming the formats when it is unknown."""
    try:
        return READERS[name]
    except KeyError:
        raise PipelineError(f"unknown data.format {name!r}; allowed: {sorted(READERS)}") from None
