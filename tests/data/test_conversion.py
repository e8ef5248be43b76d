"""pipeline.data.conversion: whole conversions (driver, Beam, report) and runner options."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.core.errors import PipelineError
from pipeline.core.files import MARKER
from pipeline.core.params import ConvertParams, DataParams, SampleParams
from pipeline.core.records import ImageRecord, ObjectAnnotation, hash_split
from pipeline.core import progress
from pipeline.data.conversion import convert_dataset, pipeline_options, runs_in_this_process
from pipeline.data.labelmap import read_label_map
from pipeline.data.readers.coco import read_coco
from pipeline.data.readers.voc import read_voc
from pipeline.data.sample import generate

from tests.data.helpers import all_issues, assert_decoded_match, decode_records, save
from tests.paths import SHARED
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} (shared datasets) absent")


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


def test_unknown_classes_error_policy(tmp_path: Path) -> None:
    root = tmp_path / "voc"
    generate(SampleParams(num_images=10), root)
    data = DataParams(root=str(root), classes=("circle",), unknown_classes="error")
    with pytest.raises(PipelineError, match="labels not in data.classes: 'square'"):
        convert_dataset(data, ConvertParams(), tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_a_class_typo_stops_convert_with_a_did_you_mean(sample: Path, tmp_path: Path) -> None:
    """``Circle`` for ``circle``: every box would be dropped as unknown and training would see no
    object; convert stops before any output, naming the labels found and the likely ones."""
    data = DataParams(root=str(sample), classes=("Circle", "sqare", "hexagon"))
    with pytest.raises(PipelineError) as err:
        convert_dataset(data, ConvertParams(), tmp_path / "out")
    assert str(err.value) == (
        "the train split has no box of the classes ['Circle', 'sqare', 'hexagon']; labels in the "
        "annotations: ['circle', 'square', 'triangle']; did you mean 'circle' for 'Circle', "
        "'square' for 'sqare' in data.classes?")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_a_train_split_whose_boxes_are_all_dropped_is_an_error(tmp_path: Path) -> None:
    """Boxes outside the image are dropped by the Beam checks: no object left in train."""
    root = tmp_path / "voc"
    root.mkdir()
    save(root / "a.jpg")  # 40 x 30
    (root / "a.xml").write_text(
        "<annotation><filename>a.jpg</filename><size><width>40</width><height>30</height></size>"
        "<object><name>cat</name><bndbox><xmin>50</xmin><ymin>2</ymin><xmax>60</xmax>"
        "<ymax>9</ymax></bndbox></object></annotation>")
    data = DataParams(root=str(root), val_fraction=0.0, test_fraction=0.0)
    with pytest.raises(PipelineError, match=r"^the train split has no usable objects \(every box "
                                            r"was dropped: \{'empty_box': 1\}\)"):
        convert_dataset(data, ConvertParams(), tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_coco_official_layout_without_test_gets_a_test_split_said_in_the_report(
        tmp_path: Path) -> None:
    """train2017 + val2017 only (the official COCO release): the report stage would fail after
    training on an empty test split; test is taken from train by hash and the report says so."""
    (tmp_path / "annotations").mkdir()
    for split, count in (("train2017", 30), ("val2017", 3)):
        (tmp_path / split).mkdir()
        names = [f"{split}_{i}.jpg" for i in range(count)]
        for index, name in enumerate(names):  # distinct pixels: no leakage warning
            Image.new("RGB", (40, 30), (index * 8, len(names), 0)).save(tmp_path / split / name)
        (tmp_path / "annotations" / f"instances_{split}.json").write_text(json.dumps({
            "images": [{"id": i, "file_name": n, "width": 40, "height": 30}
                       for i, n in enumerate(names)],
            "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [2, 2, 9, 9]}
                            for i in range(count)],
            "categories": [{"id": 1, "name": "cat"}]}))
    data = DataParams(format="coco", root=str(tmp_path), val_fraction=0.1, test_fraction=0.2)
    report = convert_dataset(data, ConvertParams(), tmp_path / "out")
    moved = sum(hash_split(f"train2017_{i}.jpg", 0.0, 0.2) == "test" for i in range(30))
    counts = {s: report["splits"][s]["images"] for s in ("train", "val", "test")}
    assert counts == {"train": 30 - moved, "val": 3, "test": moved} and moved > 0
    assert report["derived_splits"] == {"test": moved}
    note = (f"split 'test' derived from train: the dataset has no test split, so {moved} train "
            "images moved to it by id hash (data.test_fraction: 0.2)")
    assert report["warnings"] == [note]
    assert note in (tmp_path / "out" / "data_report.md").read_text()


def test_direct_runner_options() -> None:
    small = pipeline_options(ConvertParams(), 400).get_all_options()
    assert (small["direct_running_mode"], small["direct_num_workers"]) == ("in_memory", 1)
    big = pipeline_options(ConvertParams(direct_num_workers=3), 10**6).get_all_options()
    assert (big["direct_running_mode"], big["direct_num_workers"]) == ("multi_processing", 3)
    forced = ConvertParams(pipeline_args=("--direct_running_mode=multi_threading",))
    assert pipeline_options(forced, 400).get_all_options()["direct_running_mode"] == "multi_threading"


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


def test_on_a_terminal_bars_count_the_annotations_read_and_the_images_converted(
        sample: Path, tmp_path: Path, monkeypatch) -> None:
    closed = []

    class RecordedBar(progress.Bar):
        def close(self) -> None:
            closed.append((self.desc, self.n, self.total))
            super().close()

    monkeypatch.setattr(progress, "shown", lambda stream=None: True)
    monkeypatch.setattr(progress, "Bar", RecordedBar)
    convert_dataset(DataParams(root=str(sample)), ConvertParams(), tmp_path / "out")
    assert ("read annotations", 20, None) in closed  # streamed: no total known beforehand
    assert ("convert", 20, 20) in closed  # the Beam workers' images, of all images


def test_the_convert_bar_follows_only_workers_that_run_in_the_driver() -> None:
    assert runs_in_this_process(pipeline_options(ConvertParams(), 400))
    threads = ConvertParams(pipeline_args=("--direct_running_mode=multi_threading",))
    assert runs_in_this_process(pipeline_options(threads, 400))
    processes = ConvertParams(direct_num_workers=2)
    assert not runs_in_this_process(pipeline_options(processes, 10**6))
    assert not runs_in_this_process(pipeline_options(ConvertParams(runner="dask"), 400))


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


def test_driver_keeps_no_records_while_reading(tmp_path: Path, monkeypatch) -> None:
    """The driver consumes a reader's records one at a time (counts kept, records spooled to
    a file): while the reader yields, never more than two records it made are alive, so the
    driver's memory does not grow with the dataset; every record is still converted."""
    import weakref

    from pipeline.data.readers.registry import READERS

    image = save(tmp_path / "a.jpg")
    alive: weakref.WeakSet = weakref.WeakSet()
    most = [0]

    def streaming_reader(root, data, images=None, annotations=None):
        for index in range(300):
            record = ImageRecord(f"i{index}", image, 40, 30, ("train", "val", "test")[index % 3],
                                 (ObjectAnnotation("cat", 1, 1, 9, 9),), str(tmp_path))
            alive.add(record)
            most[0] = max(most[0], len(alive))
            yield record
            del record

    monkeypatch.setitem(READERS, "voc", streaming_reader)
    report = convert_dataset(DataParams(root=str(tmp_path)), ConvertParams(), tmp_path / "out")
    assert most[0] <= 2
    assert [report["splits"][s]["images"] for s in ("train", "val", "test")] == [100, 100, 100]
    assert report["images_listed"] == report["images"] == 300
