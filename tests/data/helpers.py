"""Helpers shared by the convert tests: records read back as training sees them, test images.

Written records are read back with the OD API's own TfExampleDecoder, so the tests check
what training will actually see.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.core.records import ImageRecord


def decode_records(files: Sequence[Path]) -> dict[str, dict]:
    """source_id -> boxes, classes and image shape, as the OD API's TfExampleDecoder sees them."""
    from pipeline.core import compat

    compat.apply()
    import tensorflow as tf
    from object_detection.core.standard_fields import InputDataFields as F
    from object_detection.data_decoders.tf_example_decoder import TfExampleDecoder

    dataset = tf.data.TFRecordDataset([str(f) for f in files]).map(TfExampleDecoder().decode)
    return {
        t[F.source_id].numpy().decode(): {
            "boxes": t[F.groundtruth_boxes].numpy(),
            "classes": t[F.groundtruth_classes].numpy().tolist(),
            "shape": tuple(t[F.image].shape),
        }
        for t in dataset
    }


def expected_boxes(record: ImageRecord) -> np.ndarray:
    """The record's boxes clipped to the image, empty ones dropped, as normalised YXYX."""
    w, h = record.width, record.height
    boxes = np.array([[o.ymin, o.xmin, o.ymax, o.xmax] for o in record.objects]).reshape(-1, 4)
    boxes = np.clip(boxes, 0, [h, w, h, w])
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return (boxes[keep] / [h, w, h, w]).astype(np.float32)


def assert_decoded_match(records: Sequence[ImageRecord], out: Path, label_map: dict) -> None:
    decoded = decode_records(sorted(out.glob("*.tfrecord-*")))
    assert set(decoded) == {r.image_id for r in records}
    for record in records:
        got, boxes = decoded[record.image_id], expected_boxes(record)
        np.testing.assert_allclose(got["boxes"], boxes, atol=1e-6, err_msg=record.image_id)
        kept = [o for o in record.objects if (o.xmax > o.xmin and o.ymax > o.ymin)]
        assert got["classes"] == [label_map[o.label] for o in kept]
        assert got["shape"] == (record.height, record.width, 3)


def all_issues(report: dict) -> set[tuple[str, str, str]]:
    return {(i["file"], i["reason"], i["action"])
            for split in report["splits"].values() for i in split["issues"]}


def save(path: Path, mode: str = "RGB", size: tuple[int, int] = (40, 30), fmt: str = "JPEG") -> str:
    Image.new(mode, size, 128 if mode == "L" else (200, 10, 10)).save(path, format=fmt)
    return str(path)
