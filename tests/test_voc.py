"""The Pascal VOC reader on small datasets built in tmp_path."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from pipeline.errors import PipelineError
from pipeline.records import ObjectAnnotation
from pipeline.voc import read_voc

XML = """<annotation>
  <folder>{folder}</folder>
  <filename>{filename}</filename>
  <path>/home/someone/elsewhere/{filename}</path>
  <size><width>{width}</width><height>{height}</height><depth>3</depth></size>
  {objects}
</annotation>"""
OBJECT = """<object><name>{label}</name><difficult>{difficult}</difficult>
  <truncated>{truncated}</truncated>
  <bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox>
</object>"""


def write_image(root: Path, image_id: str, filename: str, objects: str = "", **kw) -> None:
    """One image (64x48) and its XML; ``filename`` is what the XML claims."""
    Image.new("RGB", (64, 48), "gray").save(root / "JPEGImages" / f"{image_id}.jpg")
    fields = {"folder": "JPEGImages", "width": 64, "height": 48, **kw}
    xml = XML.format(filename=filename, objects=objects, **fields)
    (root / "Annotations" / f"{image_id}.xml").write_text(xml)


@pytest.fixture
def voc(tmp_path: Path) -> Path:
    """a: wrong <folder> and foreign <path>; b: <filename> of a file that does not exist."""
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (tmp_path / sub).mkdir(parents=True)
    box = OBJECT.format(label="cat", difficult=1, truncated=0, xmin=1.5, ymin=2, xmax=30, ymax=40)
    box += OBJECT.format(label=" dog ", difficult=0, truncated=1, xmin=0, ymin=0, xmax=5, ymax=5)
    write_image(tmp_path, "a", "a.jpg", box, folder="RBC")
    write_image(tmp_path, "b", "renamed_later.jpg")
    (tmp_path / "ImageSets/Main/train.txt").write_text("a\n\n")
    (tmp_path / "ImageSets/Main/val.txt").write_text("b\n")
    return tmp_path


def test_reads_records_with_images_resolved_inside_the_dataset(voc: Path) -> None:
    records = read_voc(voc)
    assert [(r.image_id, r.split) for r in records] == [("a", "train"), ("b", "val")]
    a, b = records
    assert a.image_path == str(voc.resolve() / "JPEGImages" / "a.jpg")  # not <folder>/<path>
    assert b.image_path == str(voc.resolve() / "JPEGImages" / "b.jpg")  # fallback to <id>.jpg
    assert (a.width, a.height) == (64, 48)
    assert a.objects == (
        ObjectAnnotation("cat", 1.5, 2.0, 30.0, 40.0, difficult=True),
        ObjectAnnotation("dog", 0.0, 0.0, 5.0, 5.0, truncated=True),
    )
    assert b.objects == ()


def test_missing_split_list_is_an_empty_split(voc: Path) -> None:
    assert {r.split for r in read_voc(voc)} == {"train", "val"}


def test_malformed_xml_is_a_clear_error(voc: Path) -> None:
    (voc / "Annotations" / "a.xml").write_text("<annotation><object>")
    with pytest.raises(PipelineError, match="cannot parse annotation .*a.xml"):
        read_voc(voc)


def test_entity_expansion_is_refused(voc: Path) -> None:
    bomb = '<!DOCTYPE a [<!ENTITY x "xxxxxxxx">]><annotation>&x;</annotation>'
    (voc / "Annotations" / "a.xml").write_text(bomb)
    with pytest.raises(PipelineError, match="cannot parse annotation"):
        read_voc(voc)


def test_listed_annotation_missing(voc: Path) -> None:
    (voc / "ImageSets/Main/test.txt").write_text("nope\n")
    with pytest.raises(PipelineError, match="nope.xml is listed"):
        read_voc(voc)


def test_not_a_voc_folder(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="not a Pascal VOC dataset"):
        read_voc(tmp_path)
