"""The YOLO txt writer: read back by the project's YOLO reader, it gives the records it was
given (boxes within 1e-5, classes, splits); bad images are counted, not written."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.core.params import DataParams, SampleParams
from pipeline.core.records import ImageRecord, hash_split
from pipeline.data.readers.voc import read_voc
from pipeline.data.readers.yolo import read_yolo
from pipeline.data.sample import generate
from pipeline.data.writers.yolo import DATA_YAML, write_yolo_dataset


@pytest.fixture(scope="module")
def voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("voc") / "voc"
    generate(SampleParams(num_images=16), root)
    return root


def normalised(record: ImageRecord) -> dict[str, tuple]:
    """image id -> (split, labels, normalised [xmin, ymin, xmax, ymax] boxes)."""
    boxes = np.array([[o.xmin / record.width, o.ymin / record.height, o.xmax / record.width,
                       o.ymax / record.height] for o in record.objects]).reshape(-1, 4)
    return {record.image_id: (record.split, [o.label for o in record.objects], boxes)}


def assert_same_records(got: list[ImageRecord], expected: list[ImageRecord]) -> None:
    got_by_id = {k: v for r in got for k, v in normalised(r).items()}
    expected_by_id = {k: v for r in expected for k, v in normalised(r).items()}
    assert sorted(got_by_id) == sorted(expected_by_id)
    for image_id, (split, labels, boxes) in expected_by_id.items():
        got_split, got_labels, got_boxes = got_by_id[image_id]
        assert (got_split, got_labels) == (split, labels), image_id
        np.testing.assert_allclose(got_boxes, boxes, atol=1e-5, rtol=0, err_msg=image_id)


def test_round_trip_through_the_yolo_reader_gives_the_same_boxes_classes_and_splits(
        voc: Path, tmp_path: Path) -> None:
    written = write_yolo_dataset(DataParams(format="voc", root=str(voc)), tmp_path / "yolo")
    assert_same_records(read_yolo(tmp_path / "yolo"), read_voc(voc))
    config = yaml.safe_load((tmp_path / "yolo" / DATA_YAML).read_text())
    assert config["path"] == str(tmp_path / "yolo")
    assert config["names"] == {0: "circle", 1: "square", 2: "triangle"}  # label-map id - 1
    assert sum(written.images.values()) == 16 and not written.skipped
    # Hard links to the dataset's images (nothing re-encoded in the sample), mapped to the file
    # names the report gives them.
    for relative, file_name in written.sources.items():
        assert os.path.samefile(tmp_path / "yolo" / relative, voc / "JPEGImages" / file_name)


def test_splits_by_id_hash_without_split_lists_and_a_bad_image_counted_not_written(
        voc: Path, tmp_path: Path) -> None:
    """Also: a JPEG not ending with its end marker is copied, not linked (Ultralytics would
    rewrite it in place)."""
    dataset = tmp_path / "voc"
    shutil.copytree(voc, dataset)
    shutil.rmtree(dataset / "ImageSets")
    bad, unterminated = sorted((dataset / "JPEGImages").iterdir())[:2]
    bad.write_bytes(b"not an image")
    with unterminated.open("ab") as image:
        image.write(b"trailing bytes")
    data = DataParams(format="voc", root=str(dataset), val_fraction=0.25, test_fraction=0.25)
    written = write_yolo_dataset(data, tmp_path / "yolo")
    assert written.skipped == {"corrupt_image": 1}
    expected = [r for r in read_voc(dataset, val_fraction=0.25, test_fraction=0.25)
                if r.image_id != bad.stem]
    assert {r.split for r in expected} == {"train", "val", "test"}
    assert all(r.split == hash_split(r.image_id, 0.25, 0.25) for r in expected)
    assert_same_records(read_yolo(tmp_path / "yolo"), expected)
    assert not list((tmp_path / "yolo").rglob(f"{bad.stem}.*"))
    copied = next((tmp_path / "yolo" / "images").rglob(unterminated.name))
    assert copied.read_bytes() == unterminated.read_bytes()
    assert not os.path.samefile(copied, unterminated)
