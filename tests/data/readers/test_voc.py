"""The Pascal VOC reader on small datasets built in tmp_path."""
from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from pipeline.core.errors import PipelineError
from pipeline.core.records import ObjectAnnotation, hash_split, is_inside
from pipeline.data.readers.voc import read_voc

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


def test_unusable_annotations_are_recorded_not_raised(voc: Path) -> None:
    """Malformed XML, an <object> without box, a listed XML that is missing: the image is
    skipped and reported by convert (the reason travels in ``problem``)."""
    (voc / "Annotations" / "a.xml").write_text("<annotation><object>")
    (voc / "Annotations" / "b.xml").write_text(
        "<annotation><object><name>cat</name></object></annotation>")
    (voc / "ImageSets/Main/test.txt").write_text("nope\n")
    problems = {r.image_id: r.problem.split(":")[0] for r in read_voc(voc)}
    assert problems == {"a": "bad_annotation", "b": "bad_annotation", "nope": "missing_annotation"}


def test_entity_expansion_is_refused(voc: Path) -> None:
    bomb = ('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xxxxxxxx">'
            '<!ENTITY y "&x;&x;&x;&x;&x;&x;&x;&x;">]><annotation><filename>&y;</filename>'
            '<object><name>&y;</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax>'
            '<ymax>2</ymax></bndbox></object></annotation>')
    (voc / "Annotations" / "a.xml").write_text(bomb)
    a = read_voc(voc)[0]
    assert a.problem.startswith("unsafe_annotation") and a.objects == ()


def test_external_entities_are_not_fetched(voc: Path, tmp_path_factory) -> None:
    secret = tmp_path_factory.mktemp("outside") / "secret.txt"
    secret.write_text("TOP-SECRET")
    xxe = (f'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY s SYSTEM "file://{secret}">]>'
           '<annotation><object><name>&s;</name><bndbox><xmin>1</xmin><ymin>1</ymin>'
           '<xmax>2</xmax><ymax>2</ymax></bndbox></object></annotation>')
    (voc / "Annotations" / "a.xml").write_text(xxe)
    a = read_voc(voc)[0]
    assert a.problem.startswith("unsafe_annotation") and "TOP-SECRET" not in repr(a)


def test_filename_leaving_the_images_folder_is_kept_for_refusal(voc: Path) -> None:
    """A hostile <filename> that exists is never silently followed: convert refuses it."""
    outside = voc / "outside.jpg"
    Image.new("RGB", (64, 48)).save(outside)
    write_image(voc, "a", "../outside.jpg")
    a = read_voc(voc)[0]
    assert a.image_path.endswith("JPEGImages/../outside.jpg")
    assert a.root == str(voc.resolve() / "JPEGImages")
    assert not is_inside(a.image_path, a.root)


def test_not_a_voc_folder(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="not a Pascal VOC dataset"):
        read_voc(tmp_path)


# --- flat layouts and the split by hash ---------------------------------------------------------


def flat_dataset(root: Path, image_dir: str, xml_dir: str, count: int) -> None:
    """``count`` images in ``image_dir`` (one in a subfolder), their XMLs in ``xml_dir``."""
    for index in range(count):
        sub = "nested/" if index == 0 else ""
        image = root / image_dir / f"{sub}img{index}.png"
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 48)).save(image)
        xml = root / xml_dir / f"{sub}img{index}.xml"
        xml.parent.mkdir(parents=True, exist_ok=True)
        box = OBJECT.format(label="cat", difficult=0, truncated=0, xmin=1, ymin=1, xmax=9, ymax=9)
        xml.write_text(XML.format(folder="x", filename=f"img{index}.png", width=64, height=48,
                                  objects=box))


@pytest.mark.parametrize("image_dir,xml_dir", [("images", "annotations"), ("", "")])
def test_flat_layouts_are_found(tmp_path: Path, image_dir: str, xml_dir: str) -> None:
    """images/ + annotations/, and XML next to each image (labelImg), nested folders too."""
    flat_dataset(tmp_path, image_dir, xml_dir, 30)
    records = read_voc(tmp_path, val_fraction=0.2, test_fraction=0.2)
    assert len(records) == 30
    nested = next(r for r in records if r.image_id == "nested/img0")
    assert nested.image_path == str(tmp_path.resolve() / image_dir / "nested" / "img0.png")
    assert all(Path(r.image_path).is_file() for r in records)
    assert {r.split for r in records} == {"train", "val", "test"}
    assert all(r.split == hash_split(r.image_id, 0.2, 0.2) for r in records)


@pytest.mark.parametrize("image_dir,xml_dir", [("images", "annots"), ("photos", "xml_files"),
                                               ("set/jpg", "set/xml"), ("imgs", "")])
def test_flat_folders_with_other_names_are_found_by_content(tmp_path: Path, image_dir: str,
                                                            xml_dir: str) -> None:
    """kangaroo's annots/ + images/: the folder holding the XML files and the one holding the
    images, whatever their names (before, every image was looked for next to its XML)."""
    flat_dataset(tmp_path, image_dir, xml_dir, 12)
    records = read_voc(tmp_path)
    assert sorted(r.image_id for r in records) == sorted(
        ["nested/img0", *(f"img{i}" for i in range(1, 12))])
    assert all(r.image_path == str(tmp_path.resolve() / image_dir / f"{r.image_id}.png")
               for r in records)
    assert all(r.root == str(tmp_path.resolve() / image_dir) for r in records)


def test_folders_found_by_content_but_ambiguous_or_without_images_are_named(
        tmp_path: Path) -> None:
    for split in ("train", "val"):
        flat_dataset(tmp_path, f"{split}/images", f"{split}/annots", 2)
    with pytest.raises(PipelineError) as err:
        read_voc(tmp_path)
    assert str(err.value) == (
        f"{tmp_path.resolve()}: cannot tell the annotation and image folders apart (XML files in "
        "train/annots/, val/annots/, images in train/images/, val/images/); pass --images DIR "
        "--annotations DIR to convert, or point data.root at a folder holding one set")
    for split in ("train", "val"):
        shutil.rmtree(tmp_path / split / "images")
    with pytest.raises(PipelineError, match=r"XML files in train/annots/, val/annots/, images in "
                                            "none: no image file found; pass --images DIR"):
        read_voc(tmp_path)


def test_explicit_folders(tmp_path: Path) -> None:
    flat_dataset(tmp_path, "pics", "labels", 3)
    records = read_voc(tmp_path / "elsewhere", images=tmp_path / "pics",
                       annotations=tmp_path / "labels")
    assert sorted(r.image_id for r in records) == ["img1", "img2", "nested/img0"]


def test_hash_split_is_stable_when_images_are_added() -> None:
    ids = [f"image_{i}" for i in range(2000)]
    before = {i: hash_split(i, 0.1, 0.2) for i in ids[:1000]}
    after = {i: hash_split(i, 0.1, 0.2) for i in ids}
    assert all(after[i] == split for i, split in before.items())
    shares = Counter(after.values())
    assert abs(shares["val"] / 2000 - 0.1) < 0.03 and abs(shares["test"] / 2000 - 0.2) < 0.03


def test_standard_tree_without_split_lists_uses_the_hash(voc: Path) -> None:
    for path in (voc / "ImageSets/Main").iterdir():
        path.unlink()
    records = read_voc(voc, val_fraction=0.5, test_fraction=0.5)
    assert {r.image_id: r.split for r in records} == {
        i: hash_split(i, 0.5, 0.5) for i in ("a", "b")}
