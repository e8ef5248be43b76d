"""pipeline.data.tfexample: the features of a record, byte-identical to TensorFlow's."""
from __future__ import annotations

import numpy as np

from pipeline.core.records import ImageRecord, ObjectAnnotation
from pipeline.data.tfexample import build_example


def test_build_example_features() -> None:
    objects = (ObjectAnnotation("cat", 10, 20, 50, 60, difficult=True),
               ObjectAnnotation("dog", 0, 0, 100, 80, truncated=True, is_crowd=True))
    record = ImageRecord("id-1", "/data/x/img.jpg", 100, 80, "train", objects)
    f = build_example(record, b"JPEG", {"cat": 1, "dog": 2}).features.feature
    assert f["image/height"].int64_list.value == [80]
    assert f["image/width"].int64_list.value == [100]
    assert f["image/filename"].bytes_list.value == [b"img.jpg"]
    assert f["image/source_id"].bytes_list.value == [b"id-1"]
    assert f["image/encoded"].bytes_list.value == [b"JPEG"]
    assert f["image/format"].bytes_list.value == [b"jpeg"]
    assert len(f["image/key/sha256"].bytes_list.value[0]) == 64
    np.testing.assert_allclose(f["image/object/bbox/xmin"].float_list.value, [0.1, 0.0])
    np.testing.assert_allclose(f["image/object/bbox/ymax"].float_list.value, [0.75, 1.0])
    assert f["image/object/class/text"].bytes_list.value == [b"cat", b"dog"]
    assert f["image/object/class/label"].int64_list.value == [1, 2]
    assert f["image/object/difficult"].int64_list.value == [1, 0]
    assert f["image/object/truncated"].int64_list.value == [0, 1]
    assert f["image/object/is_crowd"].int64_list.value == [0, 1]
    assert f["image/object/area"].float_list.value == [1600.0, 8000.0]


def test_examples_are_tensorflows_bytes() -> None:
    """Our TF-free Example classes serialize exactly as tf.train.Example does."""
    import tensorflow as tf

    record = ImageRecord("i", "/x/i.jpg", 10, 8, "train", (ObjectAnnotation("cat", 1, 2, 3, 4),))
    ours = build_example(record, b"JPEG", {"cat": 1})
    theirs = tf.train.Example.FromString(ours.SerializeToString())
    assert theirs.SerializeToString(deterministic=True) == ours.SerializeToString(deterministic=True)
    assert theirs.features.feature["image/object/class/text"].bytes_list.value == [b"cat"]
