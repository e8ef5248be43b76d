"""The one detector runner: Detections from raw detection arrays, inputs for each input type."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from pipeline.core.errors import PipelineError
from pipeline.odapi.detector import Detections, Detector


def _outputs(count, scores, classes, boxes=None) -> dict:
    """Exporter-style arrays of a batch of one, padded to len(scores)."""
    size = len(scores)
    if boxes is None:
        boxes = np.arange(4 * size, dtype=np.float32).reshape(size, 4) / (4 * size)
    return {"num_detections": np.array([float(count)], np.float32),
            "detection_scores": np.array([scores], np.float32),
            "detection_classes": np.array([classes], np.float32),
            "detection_boxes": np.asarray(boxes, np.float32)[np.newaxis]}


def test_detections_sorted_and_offset():
    outputs = {"num_detections": np.array([2.0]),
               "detection_scores": np.array([[0.2, 0.9, 0.0]]),
               "detection_classes": np.array([[0.0, 1.0, 0.0]]),
               "detection_boxes": np.arange(12, dtype=float).reshape(1, 3, 4)}
    dets = Detections.from_outputs(outputs, class_offset=1)
    assert dets.scores.tolist() == [0.9, 0.2]
    assert dets.classes.tolist() == [2, 1]
    assert dets.boxes[0].tolist() == [4, 5, 6, 7]


def test_padding_is_trimmed_even_when_it_scores_higher():
    # Padding rows beyond num_detections are not detections, whatever they hold.
    dets = Detections.from_outputs(_outputs(2, [0.5, 0.4, 0.95, 0.9], [1, 2, 3, 3]))
    assert len(dets) == 2
    assert dets.scores.tolist() == pytest.approx([0.5, 0.4])
    assert dets.classes.tolist() == [1, 2]
    assert dets.boxes.shape == (2, 4)


def test_no_detections_give_empty_arrays_of_the_right_shape():
    dets = Detections.from_outputs(_outputs(0, [0.0, 0.0], [0, 0]))
    assert len(dets) == 0 and dets.boxes.shape == (0, 4) and dets.classes.dtype == np.int64


def test_classes_are_rounded_label_map_ids_and_ties_keep_the_model_order():
    boxes = [[0.1, 0.1, 0.2, 0.2], [0.3, 0.3, 0.4, 0.4], [0.5, 0.5, 0.6, 0.6]]
    dets = Detections.from_outputs(_outputs(3, [0.5, 0.7, 0.5], [0.9999, 2.0001, 3.0], boxes))
    assert dets.classes.tolist() == [2, 1, 3]  # exporter ids as they are (offset 0)
    assert dets.scores.tolist() == pytest.approx([0.7, 0.5, 0.5])
    np.testing.assert_allclose(dets.boxes, [boxes[1], boxes[0], boxes[2]])


def test_batch_dimension_is_optional():
    outputs = _outputs(2, [0.2, 0.9, 0.0], [1, 2, 1])
    squeezed = {key: value[0] for key, value in outputs.items()}
    with_batch, without = Detections.from_outputs(outputs), Detections.from_outputs(squeezed)
    np.testing.assert_array_equal(with_batch.scores, without.scores)
    np.testing.assert_array_equal(with_batch.boxes, without.boxes)


class _Echo(tf.Module):
    """A detector whose single detection's score is the mean pixel value / 255."""

    def detect(self, image):
        score = tf.reduce_mean(tf.cast(image, tf.float32)) / 255.0
        return {"detection_boxes": tf.constant([[[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 0.0, 0.0]]]),
                "detection_scores": tf.stack([score, 0.0])[tf.newaxis],
                "detection_classes": tf.constant([[2.0, 1.0]]),
                "num_detections": tf.constant([1.0])}


def _saved(tmp_path, input_type: str, outputs_filter=None):
    module = _Echo()
    if input_type == "image_tensor":
        serve = tf.function(module.detect,
                            input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8)])
    else:
        def serve(inputs):
            encoded = inputs[0]
            if input_type == "tf_example":
                spec = {"image/encoded": tf.io.FixedLenFeature([], tf.string)}
                encoded = tf.io.parse_single_example(encoded, spec)["image/encoded"]
            outputs = module.detect(tf.io.decode_image(encoded, channels=3)[tf.newaxis])
            return outputs_filter(outputs) if outputs_filter else outputs

        serve = tf.function(serve, input_signature=[tf.TensorSpec([1], tf.string)])
    module.serve = serve
    tf.saved_model.save(module, str(tmp_path / "saved_model"),
                        signatures={"serving_default": module.serve})
    return Detector.load(tmp_path)


@pytest.mark.parametrize("input_type", ["image_tensor", "encoded_image_string_tensor",
                                        "tf_example"])
def test_every_input_type_sees_the_same_pixels(tmp_path, input_type):
    detector = _saved(tmp_path, input_type)
    assert detector.input_type == input_type
    rgb = np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    png = tf.io.encode_png(rgb).numpy()
    feature = tf.train.Feature(bytes_list=tf.train.BytesList(value=[png]))
    example = tf.train.Example(features=tf.train.Features(feature={"image/encoded": feature}))
    serialized = example.SerializeToString()
    expected = rgb.mean() / 255.0
    for inputs in (detector.image_input(rgb), detector.example_input(serialized),
                   detector.example_input(serialized, png)):
        detections = detector(inputs)
        assert isinstance(detections, Detections) and len(detections) == 1
        assert detections.scores[0] == pytest.approx(expected, abs=1e-6)
        assert detections.classes.tolist() == [2]


def test_a_model_without_the_detection_outputs_is_refused_in_one_line(tmp_path):
    detector = _saved(tmp_path, "encoded_image_string_tensor",
                      lambda outputs: {"scores": outputs["detection_scores"]})
    with pytest.raises(PipelineError, match=r"returned no \['detection_boxes'"):
        detector(detector.image_input(np.zeros((8, 8, 3), np.uint8)))


def test_a_missing_saved_model_is_a_pipeline_error(tmp_path):
    with pytest.raises(PipelineError, match="no SavedModel"):
        Detector.load(tmp_path)


class _BatchEcho(tf.Module):
    """A batched encoded-image detector: per image one detection scoring its mean pixel / 255,
    of class = the size of the batch it was called with (so the test sees the calls made)."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def serve(self, encoded):
        images = tf.map_fn(lambda e: tf.io.decode_image(e, channels=3, expand_animations=False),
                           encoded, fn_output_signature=tf.uint8)
        batch = tf.shape(images)[0]
        scores = tf.reduce_mean(tf.cast(images, tf.float32), axis=[1, 2, 3]) / 255.0
        return {"detection_boxes": tf.tile([[[0.1, 0.2, 0.5, 0.6]]], [batch, 1, 1]),
                "detection_scores": scores[:, tf.newaxis],
                "detection_classes": tf.fill([batch, 1], tf.cast(batch, tf.float32)),
                "num_detections": tf.ones([batch])}


@pytest.fixture()
def batch_detector(tmp_path) -> Detector:
    module = _BatchEcho()
    tf.saved_model.save(module, str(tmp_path / "saved_model"),
                        signatures={"serving_default": module.serve})
    return Detector.load(tmp_path)


def test_images_of_one_shape_go_through_a_batch_signature_in_one_call(batch_detector):
    images = [np.full((8, 6, 3), value, np.uint8) for value in (0, 51, 255)]
    detections = batch_detector.detect_images(images)
    assert [d.classes.tolist() for d in detections] == [[3], [3], [3]]  # one call, batch of 3
    assert [float(d.scores[0]) for d in detections] == pytest.approx([0.0, 0.2, 1.0])


def test_images_of_other_shapes_or_batch_one_signatures_go_one_by_one(batch_detector, tmp_path):
    mixed = [np.zeros((8, 6, 3), np.uint8), np.full((5, 5, 3), 255, np.uint8)]
    detections = batch_detector.detect_images(mixed)
    assert [d.classes.tolist() for d in detections] == [[1], [1]]
    assert [float(d.scores[0]) for d in detections] == pytest.approx([0.0, 1.0])
    single = _saved(tmp_path / "single", "image_tensor")
    assert not single.takes_batches
    assert len(single.detect_images([np.zeros((4, 4, 3), np.uint8)] * 2)) == 2
