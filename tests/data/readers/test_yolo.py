"""The YOLO txt reader: a YOLO copy of a VOC set gives the same records; every bad input reported."""
from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline.core.errors import PipelineError
from pipeline.core.params import ConvertParams, DataParams, SampleParams
from pipeline.core.records import ImageRecord, hash_split
from pipeline.data.conversion import convert_dataset
from pipeline.data.readers.voc import read_voc
from pipeline.data.readers.yolo import read_yolo
from pipeline.data.sample import generate

from tests.data.helpers import save

NAMES = ["circle", "square", "triangle"]


def yolo_line(record: ImageRecord, obj) -> str:
    """``class cx cy w h``, normalised, at full float precision."""
    w, h = record.width, record.height
    values = ((obj.xmin + obj.xmax) / 2 / w, (obj.ymin + obj.ymax) / 2 / h,
              (obj.xmax - obj.xmin) / w, (obj.ymax - obj.ymin) / h)
    return " ".join([str(NAMES.index(obj.label)), *map(repr, values)])


def voc_to_yolo(records: Sequence[ImageRecord], root: Path, split_folders: bool = True) -> None:
    """The Ultralytics layout of ``records``: images/<split>/ + labels/<split>/ (or flat)."""
    for record in records:
        sub = record.split if split_folders else ""
        for kind in ("images", "labels"):
            (root / kind / sub).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(record.image_path, root / "images" / sub / Path(record.image_path).name)
        lines = [yolo_line(record, obj) for obj in record.objects]
        (root / "labels" / sub / f"{record.image_id}.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("voc") / "voc"
    generate(SampleParams(num_images=16), root)
    return root


def examples(folder: Path) -> dict[str, tuple[str, dict]]:
    """source_id -> (split, {feature: values}) of every record written to ``folder``."""
    import tensorflow as tf

    found = {}
    for path in sorted(folder.glob("*.tfrecord-*")):
        for raw in tf.data.TFRecordDataset(str(path)):
            features = tf.train.Example.FromString(raw.numpy()).features.feature
            values = {key: list(getattr(f, f.WhichOneof("kind")).value)
                      for key, f in features.items()}
            found[values["image/source_id"][0].decode()] = (path.name.split(".")[0], values)
    return found


def test_yolo_copy_of_a_voc_set_gives_the_same_records(voc: Path, tmp_path: Path) -> None:
    """Every feature of every record equal (boxes and areas within float rounding), same
    splits, same label map and report counts."""
    yolo = tmp_path / "yolo"
    voc_to_yolo(read_voc(voc), yolo)
    (yolo / "data.yaml").write_text(yaml.safe_dump({"path": "/elsewhere", "names": NAMES}))
    reports = {fmt: convert_dataset(DataParams(format=fmt, root=str(root)), ConvertParams(),
                                    tmp_path / f"out_{fmt}")
               for fmt, root in (("voc", voc), ("yolo", yolo))}
    ours, theirs = examples(tmp_path / "out_yolo"), examples(tmp_path / "out_voc")
    assert sorted(ours) == sorted(theirs) and len(ours) == 16
    for source_id, (split, features) in theirs.items():
        got_split, got = ours[source_id]
        assert got_split == split and sorted(got) == sorted(features)
        for key, expected in features.items():
            if key.startswith("image/object/bbox/") or key == "image/object/area":
                np.testing.assert_allclose(got[key], expected, rtol=1e-5, atol=1e-5,
                                           err_msg=f"{source_id} {key}")
            else:
                assert got[key] == expected, f"{source_id} {key}"
    assert (tmp_path / "out_yolo/label_map.pbtxt").read_text() == \
        (tmp_path / "out_voc/label_map.pbtxt").read_text()
    for key in ("classes", "images", "objects", "issue_counts", "counters"):
        assert reports["yolo"][key] == reports["voc"][key], key


def records_by_id(records: Sequence[ImageRecord]) -> dict[str, tuple]:
    return {r.image_id: (r.split, r.width, r.height,
                         [(o.label, *np.round([o.xmin, o.ymin, o.xmax, o.ymax], 6)) for o in
                          r.objects]) for r in records}


def test_layouts_and_names_files_read_the_same_boxes(voc: Path, tmp_path: Path) -> None:
    """Split folders with an {id: name} data.yaml, Roboflow's {train,valid,test}/images with
    '../' paths in data.yaml, and a flat images/ + labels/ with classes.txt split by hash."""
    records = read_voc(voc)
    expected = records_by_id(records)
    split = tmp_path / "split"
    voc_to_yolo(records, split)
    (split / "data.yaml").write_text(yaml.safe_dump({"names": dict(enumerate(NAMES))}))
    assert records_by_id(read_yolo(split)) == expected

    roboflow = tmp_path / "roboflow"
    voc_to_yolo(records, tmp_path / "tmp")
    for name, folder in (("train", "train"), ("val", "valid"), ("test", "test")):
        for kind in ("images", "labels"):
            shutil.move(tmp_path / "tmp" / kind / name, roboflow / folder / kind)
    (roboflow / "data.yaml").write_text(yaml.safe_dump({
        "names": NAMES, "nc": 3, "train": "../train/images", "val": "../valid/images",
        "test": "../test/images"}))
    assert records_by_id(read_yolo(roboflow)) == expected

    flat = tmp_path / "flat"
    voc_to_yolo(records, flat, split_folders=False)
    (flat / "labels" / "classes.txt").write_text("\n".join(NAMES) + "\n")
    got = read_yolo(tmp_path, images=flat / "images", annotations=flat / "labels",
                    val_fraction=0.25, test_fraction=0.25)
    by_hash = {k: (hash_split(k, 0.25, 0.25), *v[1:]) for k, v in expected.items()}
    assert records_by_id(got) == by_hash


def test_bad_inputs_are_counted_and_reported(tmp_path: Path) -> None:
    """Malformed lines, class ids out of range, coordinates outside [0, 1], an image without a
    label file, a label file without an image: each counted and reported, none dropped
    silently; an empty label file is a background image, not an issue."""
    root = tmp_path / "yolo"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "data.yaml").write_text("names: [cat, dog]\n")
    labels = {
        "good": "0 0.5 0.5 0.5 0.5\n\n1 0.25 0.25 0.1 0.1\n",
        "short": "0 0.5 0.5 0.5\n",
        "words": "0 0.5 0.5 0.5 0.5\ncat 0.5 0.5 0.5 0.5\n1 a b c d\n",
        "class7": "7 0.5 0.5 0.2 0.2\n",
        "outside": "0 1.1 0.5 0.4 0.2\n1 1.8 0.5 0.2 0.2\n0 0.5 0.5 0.2 nan\n",
        "empty": "",
        "orphan": "0 0.5 0.5 0.2 0.2\n",
    }
    for shade, (stem, text) in enumerate(labels.items()):
        (root / "labels" / f"{stem}.txt").write_text(text)
        if stem != "orphan":  # distinct content: no duplicate_image issues
            Image.new("RGB", (40, 30), (shade * 30, 0, 0)).save(root / "images" / f"{stem}.jpg")
    save(root / "images" / "unlabelled.png", fmt="PNG")
    data = DataParams(format="yolo", root=str(root), val_fraction=0.0, test_fraction=0.0)
    report = convert_dataset(data, ConvertParams(), tmp_path / "out")
    issues = {(i["file"], i["reason"], i["action"]): i["detail"]
              for i in report["splits"]["train"]["issues"]}
    assert set(issues) == {
        ("short.jpg", "bad_annotation", "skipped"),
        ("words.jpg", "bad_annotation", "skipped"),
        ("class7.jpg", "class_id_out_of_range", "skipped"),
        ("outside.jpg", "box_clipped", "fixed"),  # x from 0.9 to 1.3: clipped at 1
        ("outside.jpg", "empty_box", "dropped_box"),  # x from 1.7 to 1.9: nothing inside
        ("outside.jpg", "non_finite_box", "dropped_box"),
        ("orphan.jpg", "missing_image", "skipped"),
        ("unlabelled.png", "no_label_file", "suspicious"),
        ("unlabelled.png", "reencoded_as_jpeg", "fixed"),
    }
    assert issues[("short.jpg", "bad_annotation", "skipped")].startswith(
        "short.txt line 1: '0 0.5 0.5 0.5': expected 'class cx cy w h'")
    assert issues[("words.jpg", "bad_annotation", "skipped")] == (
        "words.txt line 2: 'cat 0.5 0.5 0.5 0.5': not numbers (and 1 more bad lines)")
    assert "class id 7 has no name (names: 0..1)" in issues[
        ("class7.jpg", "class_id_out_of_range", "skipped")]
    assert str(root / "labels" / "orphan.txt") in issues[("orphan.jpg", "missing_image", "skipped")]
    assert report["images"] == 4  # good, outside, empty, unlabelled (both backgrounds)
    assert report["objects"] == 3  # good: 2, outside: the clipped one
    assert report["counters"]["no_label_file"] == 1 and report["counters"]["bad_annotation"] == 2
    assert "no_label_file (suspicious): 1" in (tmp_path / "out" / "data_report.md").read_text()


@pytest.mark.parametrize("files, message", [
    ({}, "no class names for the YOLO dataset: none of ['data.yaml', 'classes.txt'] found"),
    ({"data.yaml": "names: []\n"}, "data.yaml: names: Value error, must be a non-empty list"),
    ({"data.yaml": "names: {0: a, x: b}\n"}, "data.yaml: names: Value error, must be"),
    ({"data.yaml": "names: [a\n"}, "data.yaml is not valid YAML"),
    ({"classes.txt": "\n"}, "classes.txt lists no class names"),
    ({"data.yaml": "names: [a]\nval: ../../../etc\n"}, "data.yaml val: '../../../etc' is not a "
                                                       "folder inside"),
    ({"classes.txt": "a\n", "pics/x.jpg": ""}, "is not a YOLO dataset: expected"),
])
def test_unusable_dataset_is_a_one_line_error(tmp_path: Path, files: dict, message: str) -> None:
    (tmp_path / "images").mkdir()
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    if "pics/x.jpg" in files:
        (tmp_path / "images").rmdir()
    with pytest.raises(PipelineError) as raised:
        read_yolo(tmp_path)
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_exif_rotated_image_gets_the_shown_size(tmp_path: Path) -> None:
    """Labels refer to the image as shown: a 90 degree EXIF turn swaps the declared size."""
    for kind in ("images", "labels"):
        (tmp_path / kind).mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (40, 30)).save(tmp_path / "images" / "r.jpg", exif=exif.tobytes())
    (tmp_path / "labels" / "r.txt").write_text("0 0.5 0.25 1 0.5\n")
    (tmp_path / "classes.txt").write_text("cat\n")
    (record,) = read_yolo(tmp_path, val_fraction=0.0, test_fraction=0.0)
    assert (record.width, record.height) == (30, 40)
    obj = record.objects[0]
    assert (obj.xmin, obj.ymin, obj.xmax, obj.ymax) == (0.0, 0.0, 30.0, 20.0)
