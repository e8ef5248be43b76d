"""Stage ``convert``: label map, tf.Example, per-image fixes, the Beam graph and whole runs.

Written records are read back with the OD API's own TfExampleDecoder, so these tests check
what training will actually see.
"""
from __future__ import annotations

import io
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from pipeline.data.readers.coco import read_coco
from pipeline.stages.convert import (
    Issue, SplitSummaryFn, box_size_bin, build_pipeline, clean_objects, convert_dataset,
    duplicate_issues, make_runner, pipeline_options, prepare_image,
)
from pipeline.core.errors import PipelineError
from pipeline.core.files import MARKER
from pipeline.data.labelmap import build_label_map, label_map_text, read_label_map, write_label_map
from pipeline.core.params import ConvertParams, DataParams, SampleParams
from pipeline.core.records import ImageRecord, ObjectAnnotation, hash_split
from pipeline.data.sample import generate
from pipeline.data.tfexample import build_example
from pipeline.data.readers.voc import read_voc

from tests.paths import SHARED
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} (shared datasets) absent")


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


# --- label map ----------------------------------------------------------------------------------


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


# --- tf.Example ---------------------------------------------------------------------------------


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


# --- per-image fixes ----------------------------------------------------------------------------


def save(path: Path, mode: str = "RGB", size: tuple[int, int] = (40, 30), fmt: str = "JPEG") -> str:
    Image.new(mode, size, 128 if mode == "L" else (200, 10, 10)).save(path, format=fmt)
    return str(path)


def test_rgb_jpeg_bytes_are_kept(tmp_path: Path) -> None:
    record = ImageRecord("a", save(tmp_path / "a.jpg"), 40, 30, "train")
    issues: list[Issue] = []
    clean, jpeg, _ = prepare_image(record, {}, issues)
    assert jpeg == (tmp_path / "a.jpg").read_bytes() and issues == [] and clean == record


def test_grayscale_png_becomes_rgb_jpeg(tmp_path: Path) -> None:
    record = ImageRecord("g", save(tmp_path / "g.png", "L", fmt="PNG"), 40, 30, "val")
    issues: list[Issue] = []
    _, jpeg, _ = prepare_image(record, {}, issues)
    image = Image.open(io.BytesIO(jpeg))
    assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (40, 30))
    assert [(i.reason, i.action) for i in issues] == [
        ("converted_to_rgb", "fixed"), ("reencoded_as_jpeg", "fixed")]


def test_size_checks(tmp_path: Path) -> None:
    path = save(tmp_path / "a.jpg")
    issues: list[Issue] = []
    clean, _, _ = prepare_image(ImageRecord("a", path, 0, 0, "train"), {}, issues)
    assert (clean.width, clean.height) == (40, 30) and issues[0].reason == "size_missing"
    assert prepare_image(ImageRecord("a", path, 30, 40, "train"), {}, issues) is None
    assert (issues[-1].reason, issues[-1].action) == ("size_mismatch", "skipped")


def test_unreadable_images_are_skipped(tmp_path: Path) -> None:
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(Path(save(tmp_path / "ok.jpg", size=(400, 300))).read_bytes()[:600])
    issues: list[Issue] = []
    for name in ("bad.jpg", "cut.jpg", "missing.jpg"):
        record = ImageRecord(name, str(tmp_path / name), 40, 30, "train")
        assert prepare_image(record, {}, issues) is None
    assert [(i.file, i.reason, i.action) for i in issues] == [
        ("bad.jpg", "corrupt_image", "skipped"), ("cut.jpg", "corrupt_image", "skipped"),
        ("missing.jpg", "missing_image", "skipped")]


def test_image_over_the_pixel_limit_is_skipped_with_the_policy_message(tmp_path: Path) -> None:
    from tests.huge_image import huge_png

    huge_png(tmp_path / "huge.png")
    issues: list[Issue] = []
    assert prepare_image(ImageRecord("huge", str(tmp_path / "huge.png"), 0, 0, "train"), {},
                         issues) is None
    assert [(i.file, i.reason, i.action) for i in issues] == [
        ("huge.png", "image_too_large", "skipped")]
    assert "(900,000,000 pixels) is over the limit of 178,956,970" in issues[0].detail


def test_boxes_clipped_empty_dropped_unknown_dropped() -> None:
    objects = (ObjectAnnotation("cat", -5, 2, 45, 20), ObjectAnnotation("cat", 5, 5, 5, 9),
               ObjectAnnotation("cat", 50, 5, 60, 9), ObjectAnnotation("cow", 1, 1, 9, 9),
               ObjectAnnotation("cat", 1, 2, 3, 4))
    record = ImageRecord("a", "/a.jpg", 40, 30, "train", objects)
    issues: list[Issue] = []
    kept = clean_objects(record, 40, 30, {"cat": 1}, issues)
    assert kept == (ObjectAnnotation("cat", 0, 2, 40, 20), ObjectAnnotation("cat", 1, 2, 3, 4))
    assert [(i.reason, i.action) for i in issues] == [
        ("box_clipped", "fixed"), ("empty_box", "dropped_box"), ("empty_box", "dropped_box"),
        ("unknown_label", "dropped_box")]


def test_non_finite_boxes_are_dropped_reported_and_never_written(tmp_path: Path) -> None:
    """NaN / inf coordinates from VOC XML ("nan") and COCO JSON (NaN, "inf"): dropped boxes in
    the data report, the image's other boxes written."""
    voc, coco = tmp_path / "voc", tmp_path / "coco"
    for folder in (voc, coco):
        folder.mkdir()
    box = "<xmin>{}</xmin><ymin>2</ymin><xmax>20</xmax><ymax>20</ymax>"
    save(voc / "v.jpg")
    objects = "".join(f"<object><name>cat</name><bndbox>{box.format(x)}</bndbox></object>"
                      for x in ("nan", "-inf", "2"))
    (voc / "v.xml").write_text("<annotation><filename>v.jpg</filename><size><width>40</width>"
                               f"<height>30</height></size>{objects}</annotation>")
    save(coco / "c.jpg")
    bboxes = ([float("nan"), 2, 5, 5], ["inf", 2, 5, 5], [2, 2, "Infinity", 5], [2, 2, 5, 5])
    (coco / "c.json").write_text(json.dumps({  # json.dumps writes NaN / Infinity literals
        "images": [{"id": 1, "file_name": "c.jpg", "width": 40, "height": 30}],
        "annotations": [{"id": k, "image_id": 1, "category_id": 1, "bbox": bbox}
                        for k, bbox in enumerate(bboxes)],
        "categories": [{"id": 1, "name": "cat"}]}))
    data = DataParams(val_fraction=0.0, test_fraction=0.0)
    for fmt, folder, dropped in (("voc", voc, 2), ("coco", coco, 3)):
        out = tmp_path / f"out_{fmt}"
        report = convert_dataset(replace(data, format=fmt, root=str(folder)), ConvertParams(),
                                 out, images=str(folder),
                                 annotations=str(folder / "c.json") if fmt == "coco" else None)
        assert report["issue_counts"] == {"non_finite_box": dropped}, fmt
        assert report["counters"]["non_finite_box"] == dropped
        assert report["objects"] == 1
        (decoded,) = decode_records(sorted(out.glob("train.tfrecord-*"))).values()
        assert decoded["boxes"].shape == (1, 4) and np.isfinite(decoded["boxes"]).all()
        assert "non_finite_box" in (out / "data_report.md").read_text()


# --- hygiene: one tiny fixture per case, exact outcome --------------------------------------------


def outcome(record: ImageRecord, **kw) -> tuple:
    """(prepared or None, [(reason, action)]) of one image."""
    issues: list[Issue] = []
    prepared = prepare_image(record, {"cat": 1}, issues, **kw)
    return prepared, [(i.reason, i.action) for i in issues]


def exif_jpeg(path: Path, orientation: int, size: tuple[int, int] = (40, 30)) -> str:
    """A JPEG whose left half is red, right half blue, with an EXIF orientation tag."""
    image = Image.new("RGB", size, (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, size[0] // 2, size[1]))
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, format="JPEG", exif=exif.tobytes(), quality=95)
    return str(path)


def test_exif_rotation_applied_when_the_declared_size_is_the_rotated_one(tmp_path: Path) -> None:
    path = exif_jpeg(tmp_path / "r.jpg", 6)  # stored 40x30, shown rotated 90 degrees: 30x40
    box = ObjectAnnotation("cat", 0, 0, 30, 20)  # the top half of the image as shown
    prepared, issues = outcome(ImageRecord("r", path, 30, 40, "train", (box,)))
    assert issues == [("exif_rotated", "fixed")]
    stored = Image.open(io.BytesIO(prepared.jpeg))
    assert stored.size == (30, 40) and (prepared.record.width, prepared.record.height) == (30, 40)
    assert stored.getpixel((15, 5))[0] > 200  # shown top = stored left half = red
    assert prepared.record.objects == (box,)


def test_exif_rotation_ignored_when_the_declared_size_is_the_stored_one(tmp_path: Path) -> None:
    path = exif_jpeg(tmp_path / "s.jpg", 6)
    prepared, issues = outcome(ImageRecord("s", path, 40, 30, "train"))
    assert issues == [("exif_orientation_ignored", "fixed")]
    assert prepared.jpeg == Path(path).read_bytes()  # TensorFlow ignores EXIF: pixels as stored


def test_exif_flip_applied_when_size_cannot_tell(tmp_path: Path) -> None:
    path = exif_jpeg(tmp_path / "f.jpg", 2)  # mirrored: same size either way
    prepared, issues = outcome(ImageRecord("f", path, 40, 30, "train"))
    assert issues == [("exif_rotated", "fixed")]
    assert Image.open(io.BytesIO(prepared.jpeg)).getpixel((5, 15))[2] > 200  # blue now left


@pytest.mark.parametrize("mode,fmt,reasons", [
    ("CMYK", "JPEG", ["converted_to_rgb"]),
    ("L", "JPEG", ["converted_to_rgb"]),
    ("P", "PNG", ["converted_to_rgb", "reencoded_as_jpeg"]),
    ("RGBA", "PNG", ["converted_to_rgb", "reencoded_as_jpeg"]),
    ("RGB", "PNG", ["reencoded_as_jpeg"]),
    ("RGB", "BMP", ["reencoded_as_jpeg"]),
    ("P", "GIF", ["converted_to_rgb", "reencoded_as_jpeg"]),
])
def test_colour_modes_and_formats_become_rgb_jpeg(tmp_path: Path, mode, fmt, reasons) -> None:
    path = save(tmp_path / f"x.{fmt.lower()}", mode, fmt=fmt)
    prepared, issues = outcome(ImageRecord("x", path, 40, 30, "train"))
    image = Image.open(io.BytesIO(prepared.jpeg))
    assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (40, 30))
    assert issues == [(reason, "fixed") for reason in reasons]


def test_16_bit_grey_is_scaled_not_clipped(tmp_path: Path) -> None:
    levels = np.tile(np.array([0, 32768, 65535], dtype=np.uint16), (30, 14))[:, :40]
    Image.fromarray(levels).save(tmp_path / "deep.png")
    prepared, issues = outcome(ImageRecord("d", str(tmp_path / "deep.png"), 40, 30, "train"))
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    assert issues == [("converted_to_rgb", "fixed"), ("reencoded_as_jpeg", "fixed")]
    rgb = np.asarray(Image.open(io.BytesIO(prepared.jpeg)))
    assert abs(int(rgb[5, 0, 0]) - 0) <= 3 and abs(int(rgb[5, 1, 0]) - 128) <= 3
    assert abs(int(rgb[5, 2, 0]) - 255) <= 3  # Pillow's own convert would clip 32768 to 255


def test_size_mismatch_rescale_policy(tmp_path: Path) -> None:
    box = ObjectAnnotation("cat", 10, 10, 20, 30)
    record = ImageRecord("a", save(tmp_path / "a.jpg", size=(40, 30)), 80, 60, "train", (box,))
    assert outcome(record) == (None, [("size_mismatch", "skipped")])
    prepared, issues = outcome(record, size_mismatch="rescale")
    assert issues == [("size_mismatch", "fixed")]
    assert prepared.record.objects == (ObjectAnnotation("cat", 5, 5, 10, 15),)


def test_path_leaving_the_dataset_is_refused(tmp_path: Path) -> None:
    outside = save(tmp_path / "outside.jpg")
    (tmp_path / "data").mkdir()
    for path in (str(tmp_path / "data" / ".." / "outside.jpg"), outside):
        record = ImageRecord("x", path, 40, 30, "train", root=str(tmp_path / "data"))
        assert outcome(record) == (None, [("unsafe_path", "skipped")])


def test_unsafe_references_name_the_annotation_and_links_leaving_are_refused(
        tmp_path: Path) -> None:
    """A path leaving the dataset and a symbolic link leaving it: skipped, counted, reported
    with the annotation file that named them; links inside it or into a DVC cache are fine."""
    root, outside, cache = tmp_path / "voc", tmp_path / "elsewhere", tmp_path / "p/.dvc/cache"
    for folder in (root / "real", outside, cache):
        folder.mkdir(parents=True)

    def picture(path: Path, shade: int) -> Path:
        Image.new("RGB", (40, 30), (shade, 10, 10)).save(path, format="JPEG")
        return path

    picture(outside / "secret.jpg", 10)
    (root / "linked_out.jpg").symlink_to(outside / "secret.jpg")
    (root / "linked_in.jpg").symlink_to(picture(root / "real" / "inside.jpg", 60))
    (root / "cached.jpg").symlink_to(picture(cache / "ab12", 110))
    picture(root / "plain.jpg", 160)
    names = {"dotdot": "../elsewhere/secret.jpg", "linked_out": "linked_out.jpg",
             "linked_in": "linked_in.jpg", "cached": "cached.jpg", "plain": "plain.jpg"}
    for stem, filename in names.items():
        (root / f"{stem}.xml").write_text(
            f"<annotation><filename>{filename}</filename><size><width>40</width><height>30"
            "</height></size><object><name>cat</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
            "<xmax>9</xmax><ymax>9</ymax></bndbox></object></annotation>")
    data = DataParams(root=str(root), val_fraction=0.0, test_fraction=0.0)
    report = convert_dataset(data, ConvertParams(), tmp_path / "out")
    issues = {i["reason"]: i for i in report["splits"]["train"]["issues"]}
    assert report["issue_counts"] == {"unsafe_link": 1, "unsafe_path": 1}
    assert report["images"] == 3  # linked_in, cached, plain
    assert issues["unsafe_path"]["detail"].startswith(f"{root.resolve() / 'dotdot.xml'} refers to")
    link = issues["unsafe_link"]
    assert link["file"] == "linked_out.jpg"
    assert link["detail"].startswith(f"{root.resolve() / 'linked_out.xml'} refers to")
    assert f"a symbolic link to {outside.resolve() / 'secret.jpg'}" in link["detail"]
    assert "linked_out.xml refers to" in (tmp_path / "out" / "data_report.md").read_text()


def test_reader_problem_skips_the_image(tmp_path: Path) -> None:
    record = ImageRecord("x", save(tmp_path / "x.jpg"), 40, 30, "val",
                         problem="unsafe_annotation: x.xml: declares a DTD")
    issues: list[Issue] = []
    assert prepare_image(record, {}, issues) is None
    assert issues == [Issue("x.jpg", "val", "unsafe_annotation", "skipped", "x.xml: declares a DTD")]


def test_unknown_classes_error_policy(tmp_path: Path) -> None:
    root = tmp_path / "voc"
    generate(SampleParams(num_images=10), root)
    data = DataParams(root=str(root), classes=("circle",), unknown_classes="error")
    with pytest.raises(PipelineError, match="labels not in data.classes: 'square'"):
        convert_dataset(data, ConvertParams(), tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_summary_histograms() -> None:
    fn = SplitSummaryFn()
    acc = fn.add_input(fn.create_accumulator(), (["a", "b", "a"], [4.0, 40.0, 600.0]))
    acc = fn.merge_accumulators([acc, fn.add_input(fn.create_accumulator(), ([], []))])
    assert acc == {"images": 2, "objects": 3, "max_objects_per_image": 3,
                   "objects_per_class": {"a": 2, "b": 1}, "objects_per_image": {"3": 1, "0": 1},
                   "box_sizes": {"0-8": 1, "32-64": 1, ">=512": 1}}
    assert [box_size_bin(s) for s in (0, 8, 95.9, 96)] == ["0-8", "8-16", "64-96", "96-128"]


# --- Beam graph ---------------------------------------------------------------------------------


def test_build_pipeline_on_test_pipeline(tmp_path: Path, caplog) -> None:
    box = ObjectAnnotation("cat", 10, 10, 50, 20)  # sticks out of the 40 px wide image
    (tmp_path / "corrupt.jpg").write_bytes(b"garbage")
    same = save(tmp_path / "same.jpg", size=(32, 32))
    records = [
        ImageRecord("a", save(tmp_path / "a.jpg"), 40, 30, "train", (box,)),
        ImageRecord("g", save(tmp_path / "g.png", "L", fmt="PNG"), 40, 30, "val"),
        ImageRecord("c", str(tmp_path / "corrupt.jpg"), 40, 30, "train"),
        ImageRecord("s1", same, 32, 32, "train"),
        ImageRecord("s2", same, 32, 32, "test"),  # the same content in train and test
    ]
    out = tmp_path / "out"
    caplog.set_level(logging.INFO, logger="pipeline.stages.convert")
    with test_pipeline.TestPipeline(runner=make_runner(PipelineOptions())) as p:
        result = build_pipeline(p, records, out, {"cat": 1}, {"train": 2, "val": 1, "test": 1})
        issues = result.issues | beam.Map(lambda i: (i["file"], i["split"], i["reason"],
                                                     i["action"]))
        assert_that(issues, equal_to([
            ("a.jpg", "train", "box_clipped", "fixed"),
            ("g.png", "val", "converted_to_rgb", "fixed"),
            ("g.png", "val", "reencoded_as_jpeg", "fixed"),
            ("corrupt.jpg", "train", "corrupt_image", "skipped"),
            ("same.jpg", "train", "leakage", "suspicious"),
            ("same.jpg", "test", "leakage", "suspicious")]), label="CheckIssues")
        assert_that(result.shards, equal_to([  # dealt round-robin: a, s1 | c (corrupt)
            ("train", "train.tfrecord-00000-of-00002", 2),
            ("train", "train.tfrecord-00001-of-00002", 0),
            ("val", "val.tfrecord-00000-of-00001", 1),
            ("test", "test.tfrecord-00000-of-00001", 1)]), label="CheckShards")
        summaries = result.summaries | beam.Map(
            lambda kv: (kv[0], kv[1]["images"], kv[1]["objects_per_class"],
                        kv[1]["objects_per_image"], sum(kv[1]["box_sizes"].values())))
        assert_that(summaries, equal_to([
            ("train", 2, {"cat": 1}, {"0": 1, "1": 1}, 1),
            ("val", 1, {}, {"0": 1}, 0),
            ("test", 1, {}, {"0": 1}, 0)]), label="CheckSummaries")
    names = sorted(f.name for f in out.glob("*.tfrecord-*"))
    assert names == ["test.tfrecord-00000-of-00001", "train.tfrecord-00000-of-00002",
                     "train.tfrecord-00001-of-00002", "val.tfrecord-00000-of-00001"]
    decoded = decode_records(sorted(out.glob("*.tfrecord-*")))
    np.testing.assert_allclose(decoded["a"]["boxes"], [[10 / 30, 0.25, 20 / 30, 1.0]], atol=1e-6)
    assert decoded["g"]["shape"] == (30, 40, 3)
    assert sorted(decoded) == ["a", "g", "s1", "s2"]
    progress = [r.getMessage() for r in caplog.records if r.name == "pipeline.stages.convert"]
    assert "convert: train.tfrecord-00000-of-00002: 2/2 images" in progress  # progress is logged


def test_duplicates_within_a_split_name_all_but_the_first() -> None:
    got = list(duplicate_issues([("train", "b.jpg"), ("train", "a.jpg"), ("train", "c.jpg")]))
    assert [(i["file"], i["reason"], i["action"]) for i in got] == [
        ("b.jpg", "duplicate_image", "suspicious"), ("c.jpg", "duplicate_image", "suspicious")]
    assert got[0]["detail"] == "same content as a.jpg (train), c.jpg (train)"
    assert list(duplicate_issues([("val", "x.jpg")])) == []


def test_direct_runner_options() -> None:
    small = pipeline_options(ConvertParams(), 400).get_all_options()
    assert (small["direct_running_mode"], small["direct_num_workers"]) == ("in_memory", 1)
    big = pipeline_options(ConvertParams(direct_num_workers=3), 10**6).get_all_options()
    assert (big["direct_running_mode"], big["direct_num_workers"]) == ("multi_processing", 3)
    forced = ConvertParams(pipeline_args=("--direct_running_mode=multi_threading",))
    assert pipeline_options(forced, 400).get_all_options()["direct_running_mode"] == "multi_threading"


# --- whole conversions --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sample") / "voc"
    generate(SampleParams(num_images=20), root)
    return root


def test_convert_sample_end_to_end(sample: Path, tmp_path: Path) -> None:
    out = tmp_path / "tfrecords"
    report = convert_dataset(DataParams(root=str(sample)), ConvertParams(), out)
    assert sorted(f.name for f in out.iterdir()) == [
        MARKER, "data_report.json", "data_report.md", "label_map.pbtxt", "plots",
        "test.tfrecord-00000-of-00001", "train.tfrecord-00000-of-00001",
        "val.tfrecord-00000-of-00001"]
    assert sorted(f.name for f in (out / "plots").iterdir()) == [
        "box_sizes.png", "class_histogram.png", "objects_per_image.png"]
    assert report["plots"] == ["plots/class_histogram.png", "plots/box_sizes.png",
                               "plots/objects_per_image.png"]
    assert "![plots/box_sizes.png](plots/box_sizes.png)" in (out / "data_report.md").read_text()
    assert not out.with_name("tfrecords.partial").exists()
    label_map = read_label_map(out / "label_map.pbtxt")
    assert label_map == {"circle": 1, "square": 2, "triangle": 3}
    records = read_voc(sample)
    assert_decoded_match(records, out, label_map)
    assert json.loads((out / "data_report.json").read_text()) == report
    assert report["images"] == 20 and report["objects"] == sum(len(r.objects) for r in records)
    assert report["max_objects_per_image"] == max(len(r.objects) for r in records)
    assert report["splits"]["train"]["images"] == sum(r.split == "train" for r in records)
    assert report["counters"] == {"images_written": 20, "shards_written": 3}
    assert "| train |" in (out / "data_report.md").read_text()


def test_convert_with_fixed_classes_and_shards(sample: Path, tmp_path: Path) -> None:
    data = DataParams(root=str(sample), classes=("square", "circle"))
    report = convert_dataset(data, ConvertParams(num_shards=2), tmp_path / "out")
    triangles = sum(o.label == "triangle" for r in read_voc(sample) for o in r.objects)
    assert report["issue_counts"] == {"unknown_label": triangles}
    assert report["counters"]["unknown_label"] == triangles  # Beam's counters agree
    assert report["classes"] == [{"id": 1, "name": "square"}, {"id": 2, "name": "circle"}]
    assert len(list((tmp_path / "out").glob("val.tfrecord-*-of-00002"))) == 2


def test_empty_train_is_an_error_and_leaves_old_output(sample: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / MARKER).write_text("")  # a previous output of this project
    (out / "old").write_text("previous run")
    for image_id in (sample / "ImageSets/Main/train.txt").read_text().split():
        (sample / "JPEGImages" / f"{image_id}.jpg").write_bytes(b"corrupt")  # last use of sample
    with pytest.raises(PipelineError, match="train split has no usable images"):
        convert_dataset(DataParams(root=str(sample)), ConvertParams(), out)
    assert (out / "old").exists() and not out.with_name("out.partial").exists()
    (sample / "ImageSets/Main/train.txt").write_text("")
    with pytest.raises(PipelineError, match="train split has no images"):
        convert_dataset(DataParams(root=str(sample)), ConvertParams(), out)


@needs_shared
def test_convert_bccd_voc(tmp_path: Path) -> None:
    root = SHARED / "datasets/bccd_voc/BCCD"
    report = convert_dataset(DataParams(format="voc", root=str(root)), ConvertParams(), tmp_path)
    assert all_issues(report) == {  # documented quirk: two zero-size boxes, dropped and reported
        ("BloodImage_00338.jpg", "empty_box", "dropped_box"),
        ("BloodImage_00343.jpg", "empty_box", "dropped_box")}
    records = read_voc(root)
    assert report["images"] == len(records) == 364
    assert_decoded_match(records, tmp_path, read_label_map(tmp_path / "label_map.pbtxt"))


@needs_shared
def test_convert_rbc_coco(tmp_path: Path) -> None:
    root = SHARED / "datasets/rbc_coco"
    data = DataParams(format="coco", root=str(root))
    report = convert_dataset(data, ConvertParams(), tmp_path)
    assert report["classes"] == [{"id": 1, "name": "rbc"}, {"id": 2, "name": "wbc"}]
    assert all_issues(report) == set()  # boxes touch the border but none crosses it
    assert [report["splits"][s]["images"] for s in ("train", "val", "test")] == [210, 20, 10]
    records = read_coco(root, data.coco_annotation_file)
    assert_decoded_match(records, tmp_path, read_label_map(tmp_path / "label_map.pbtxt"))


def test_cli_flat_voc_folders_split_by_hash(tmp_path: Path, monkeypatch, capsys) -> None:
    """``python -m pipeline convert --format voc --images DIR --annotations DIR --output DIR``."""
    from pipeline.cli import main

    images, xmls = tmp_path / "pics", tmp_path / "labels"
    for folder in (images, xmls):
        folder.mkdir()
    for index in range(12):
        save(images / f"p{index}.jpg")
        (xmls / f"p{index}.xml").write_text(
            f"<annotation><filename>p{index}.jpg</filename><size><width>40</width>"
            "<height>30</height></size><object><name>cat</name><bndbox><xmin>1</xmin>"
            "<ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object></annotation>")
    params = tmp_path / "params.yaml"
    params.write_text("data:\n  val_fraction: 0.25\n  test_fraction: 0.25\n")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    out = tmp_path / "out"
    assert main(["convert", "--params", str(params), "--format", "voc", "--images", str(images),
                 "--annotations", str(xmls), "--output", str(out)]) == 0
    report = json.loads((out / "data_report.json").read_text())
    expected = Counter(hash_split(f"p{i}", 0.25, 0.25) for i in range(12))
    assert {s: report["splits"][s]["images"] for s in ("train", "val", "test")} == {
        s: expected[s] for s in ("train", "val", "test")}
    assert set(decode_records(sorted(out.glob("*.tfrecord-*")))) == {f"p{i}" for i in range(12)}

    with pytest.raises(SystemExit):
        main(["convert", "--help"])
    help_text = capsys.readouterr().out
    assert "--images" in help_text and "--annotations" in help_text and "--input" in help_text


def test_cli_bad_dataset_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    from pipeline.cli import main

    params = tmp_path / "params.yaml"
    params.write_text("{}\n")
    assert main(["convert", "--params", str(params), "--input", str(tmp_path / "nope"),
                 "--output", str(tmp_path / "out")]) == 1
    assert "error: convert: dataset root" in capsys.readouterr().err


def test_output_never_replaces_an_input_or_a_foreign_folder(tmp_path: Path, monkeypatch,
                                                            capsys) -> None:
    """``--output`` equal to the dataset, containing it, or holding someone's files: refused
    with one line before any work, nothing deleted; an earlier output of ours is replaced."""
    from pipeline.cli import main

    dataset = tmp_path / "project" / "voc"
    generate(SampleParams(num_images=10), dataset)  # the smallest valid sample
    params = tmp_path / "params.yaml"
    params.write_text("{}\n")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    files_before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for output in (dataset, dataset.parent, foreign):
        code = main(["convert", "--params", str(params), "--input", str(dataset),
                     "--output", str(output)])
        err = capsys.readouterr().err
        assert code == 1 and ("refusing" in err or "would replace the input" in err), err
        assert len(err.strip().splitlines()) == 1
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == files_before
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    out = tmp_path / "tfrecords"
    for _ in range(2):  # the second run replaces the first one's (marked) output
        assert main(["convert", "--params", str(params), "--input", str(dataset),
                     "--output", str(out)]) == 0
    assert (out / MARKER).is_file() and (out / "data_report.json").is_file()


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
