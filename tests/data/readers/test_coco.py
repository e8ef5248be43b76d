"""The COCO reader on small datasets built in tmp_path."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.data.readers.coco import read_coco
from pipeline.core.errors import PipelineError
from pipeline.core.records import ObjectAnnotation, hash_split, is_inside

ANNOTATIONS = "_annotations.coco.json"


def coco_json(images: list[dict], annotations: list[dict]) -> dict:
    """Roboflow-like: placeholder category 0 without annotations, gapped ids 3 and 7."""
    return {
        "info": {"year": "2021"},
        "categories": [
            {"id": 0, "name": "animals", "supercategory": "none"},
            {"id": 3, "name": "cat", "supercategory": "animals"},
            {"id": 7, "name": "dog", "supercategory": "animals"},
        ],
        "images": images,
        "annotations": annotations,
    }


def image(image_id: int, name: str) -> dict:
    return {"id": image_id, "file_name": name, "width": 100, "height": 80}


def ann(ann_id: int, image_id: int, category: int, bbox: list[float], crowd: int = 0) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": category, "bbox": bbox,
            "iscrowd": crowd, "area": bbox[2] * bbox[3]}


@pytest.fixture
def coco(tmp_path: Path) -> Path:
    """train/ with a negative image (no annotations) and valid/ (the Roboflow name for val)."""
    train = coco_json(
        [image(0, "a.jpg"), image(1, "negative.jpg")],
        [ann(0, 0, 3, [10.5, 20, 30.25, 40]), ann(1, 0, 7, [0, 0, 100, 80], crowd=1)],
    )
    valid = coco_json([image(5, "v.jpg")], [ann(9, 5, 7, [1, 2, 3, 4])])
    for folder, data in (("train", train), ("valid", valid)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / ANNOTATIONS).write_text(json.dumps(data))
    return tmp_path


def test_reads_splits_boxes_and_names(coco: Path) -> None:
    records = read_coco(coco, ANNOTATIONS)
    assert [(r.image_id, r.split) for r in records] == [
        ("a.jpg", "train"), ("negative.jpg", "train"), ("v.jpg", "val")]
    a, negative, v = records
    assert a.image_path == str(coco.resolve() / "train" / "a.jpg")
    assert (a.width, a.height) == (100, 80)
    assert a.objects == (
        ObjectAnnotation("cat", 10.5, 20.0, 40.75, 60.0),
        ObjectAnnotation("dog", 0.0, 0.0, 100.0, 80.0, is_crowd=True),
    )
    assert negative.objects == ()  # kept as a negative example
    assert v.objects == (ObjectAnnotation("dog", 1.0, 2.0, 4.0, 6.0),)


def test_placeholder_category_never_appears(coco: Path) -> None:
    labels = {o.label for r in read_coco(coco, ANNOTATIONS) for o in r.objects}
    assert labels == {"cat", "dog"}


def test_unknown_category_is_a_clear_error(coco: Path) -> None:
    path = coco / "train" / ANNOTATIONS
    data = json.loads(path.read_text())
    data["annotations"].append(ann(5, 0, 42, [1, 1, 2, 2]))
    path.write_text(json.dumps(data))
    with pytest.raises(PipelineError, match="annotation 5 refers to an unknown"):
        read_coco(coco, ANNOTATIONS)


def test_missing_annotation_file_names_the_setting(coco: Path) -> None:
    with pytest.raises(PipelineError, match="data.coco_annotation_file"):
        read_coco(coco, "other.json")


def test_not_a_coco_root(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="not a COCO dataset root"):
        read_coco(tmp_path, ANNOTATIONS)


def test_one_file_split_by_hash(tmp_path: Path) -> None:
    """--annotations FILE: one COCO file for the whole dataset, split by a hash of file_name."""
    images = [image(i, f"img{i}.jpg") for i in range(40)]
    path = tmp_path / "all.json"
    path.write_text(json.dumps(coco_json(images, [ann(0, 3, 3, [1, 1, 5, 5])])))
    records = read_coco(tmp_path / "unused", annotations=path, images=tmp_path / "pics",
                        val_fraction=0.25, test_fraction=0.25)
    assert len(records) == 40 and {r.split for r in records} == {"train", "val", "test"}
    assert all(r.split == hash_split(r.image_id, 0.25, 0.25) for r in records)
    assert records[0].image_path == str(tmp_path.resolve() / "pics" / "img0.jpg")
    assert records[3].objects == (ObjectAnnotation("cat", 1.0, 1.0, 6.0, 6.0),)


def test_single_json_in_root_is_found(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "export.json").write_text(json.dumps(coco_json([image(1, "a.jpg")], [])))
    (record,) = read_coco(tmp_path, val_fraction=0.0, test_fraction=0.0)
    assert (record.split, record.image_path) == ("train", str(tmp_path.resolve() / "images/a.jpg"))


def test_large_ids_and_numbers_as_strings(tmp_path: Path) -> None:
    """Ids above 2^32 (as numbers or strings), sizes, boxes and iscrowd as strings."""
    big = 2**40 + 7
    data = coco_json(
        [{"id": big, "file_name": "a.jpg", "width": "100", "height": "80.0"}],
        [{"id": 2**33, "image_id": str(big), "category_id": "7", "bbox": ["1.5", "2", "3", "4"],
          "iscrowd": "0"},
         {"id": 2**33 + 1, "image_id": big, "category_id": 3, "bbox": [0, 0, 1, 1],
          "iscrowd": "1"}])
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / ANNOTATIONS).write_text(json.dumps(data))
    (record,) = read_coco(tmp_path, ANNOTATIONS)
    assert (record.width, record.height) == (100, 80)
    assert record.objects == (ObjectAnnotation("dog", 1.5, 2.0, 4.5, 6.0, is_crowd=False),
                              ObjectAnnotation("cat", 0.0, 0.0, 1.0, 1.0, is_crowd=True))


def test_file_name_leaving_the_folder_is_kept_for_refusal(coco: Path) -> None:
    path = coco / "train" / ANNOTATIONS
    data = json.loads(path.read_text())
    data["images"][0]["file_name"] = "../../etc/passwd"
    data["images"][1]["file_name"] = "/etc/passwd"
    path.write_text(json.dumps(data))
    hostile = [r for r in read_coco(coco, ANNOTATIONS) if r.split == "train"]
    assert not any(is_inside(r.image_path, r.root) for r in hostile)
    assert {r.annotation for r in hostile} == {str(path.resolve())}  # named in the data report


def test_official_layout_one_file_per_split(tmp_path: Path) -> None:
    """annotations/instances_{train,val}2017.json with images in train2017/ and val2017/."""
    (tmp_path / "annotations").mkdir()
    for name, images in (("train2017", [image(1, "t.jpg")]), ("val2017", [image(2, "v.jpg")])):
        (tmp_path / name).mkdir()
        (tmp_path / "annotations" / f"instances_{name}.json").write_text(
            json.dumps(coco_json(images, [])))
    records = read_coco(tmp_path)
    assert [(r.image_id, r.split, r.image_path) for r in records] == [
        ("t.jpg", "train", str(tmp_path.resolve() / "train2017" / "t.jpg")),
        ("v.jpg", "val", str(tmp_path.resolve() / "val2017" / "v.jpg"))]
    again = read_coco(tmp_path / "x", annotations=tmp_path / "annotations", images=tmp_path)
    assert [(r.image_id, r.split) for r in again] == [("t.jpg", "train"), ("v.jpg", "val")]


@pytest.mark.parametrize("content, message", [
    ([1, 2], "a COCO file must hold a JSON object"),
    ({"images": [], "categories": []}, "annotations: Field required"),
    ({"annotations": [], "categories": []}, "images: Field required"),
    ({"images": [], "annotations": []}, "categories: Field required"),
    ({"images": {}, "annotations": [], "categories": []}, "images: Input should be a valid list"),
    (coco_json([image(1, "a.jpg")], [{**ann(1, 1, 3, [0] * 4), "bbox": [1, 2, 3]}]),
     "annotations[0].bbox: List should have at least 4 items"),
    (coco_json([image(1, "a.jpg")], [{**ann(1, 1, 3, [0] * 4), "bbox": "1234"}]),
     "annotations[0].bbox: Input should be a valid list (got '1234')"),
    (coco_json([image(1, "a.jpg")], [{**ann(1, 1, 3, [0] * 4), "bbox": [1, "two", 3, 4]}]),
     "annotations[0].bbox[1]: Input should be a valid number"),
    (coco_json([image(1, "a.jpg")], [ann(1, 1.5, 3, [1, 2, 3, 4])]),
     "annotations[0].image_id: Value error, must be an integer id (got 1.5)"),
    (coco_json([{"id": "abc", "file_name": "a.jpg"}], []),
     "images[0].id: Value error, must be an integer id (got 'abc')"),
    (coco_json([{"id": 1, "width": 10}], []), "images[0].file_name: Field required"),
    (coco_json([image(1, "a.jpg")], [{**ann(1, 1, 3, [0] * 4), "iscrowd": "nan"}]),
     "annotations[0].iscrowd"),
    ({**coco_json([], []), "categories": [{"id": 1}]}, "categories[0].name: Field required"),
])
def test_malformed_coco_is_a_one_line_error_naming_file_and_key(tmp_path: Path, content,
                                                                 message) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    with pytest.raises(PipelineError) as raised:
        read_coco(tmp_path / "unused", annotations=path, images=tmp_path)
    text = str(raised.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text


def test_malformed_coco_through_the_cli_has_no_traceback(tmp_path: Path, capsys) -> None:
    from pipeline.cli import main

    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"images": [{"id": 1}], "annotations": [], "categories": []}))
    (tmp_path / "params.yaml").write_text("{}\n")
    code = main(["convert", "--params", str(tmp_path / "params.yaml"), "--format", "coco",
                 "--images", str(tmp_path), "--annotations", str(path),
                 "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and err == f"error: convert: {path}: images[0].file_name: Field required\n"
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
