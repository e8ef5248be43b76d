"""The built-in synthetic dataset: deterministic, well-formed Pascal VOC with varied objects."""
import hashlib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from PIL import Image

from pipeline.data import sample
from pipeline.core.params import SampleParams

SMALL = SampleParams(num_images=30, image_size=128, classes=("circle", "star", "cross"),
                     val_fraction=0.1, test_fraction=0.1, seed=3)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sample") / "voc"
    sample.generate(SMALL, root)
    return root


def read_objects(xml_path: Path) -> list[tuple[str, int, int, int, int]]:
    root = ET.parse(xml_path).getroot()
    return [
        (o.findtext("name"), *(int(o.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")))
        for o in root.iter("object")
    ]


def digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            h.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
    return h.hexdigest()


def test_writes_a_standard_voc_tree(dataset):
    images = sorted(p.stem for p in (dataset / "JPEGImages").glob("*.jpg"))
    annotations = sorted(p.stem for p in (dataset / "Annotations").glob("*.xml"))
    assert images == annotations and len(images) == SMALL.num_images
    lists = {s: (dataset / "ImageSets/Main" / f"{s}.txt").read_text().split() for s in
             ("train", "val", "test", "trainval")}
    assert sorted(lists["train"] + lists["val"] + lists["test"]) == images
    assert sorted(lists["trainval"]) == sorted(lists["train"] + lists["val"])
    assert (len(lists["val"]), len(lists["test"])) == (3, 3)


def test_boxes_lie_inside_the_image_and_use_only_configured_classes(dataset):
    for xml_path in (dataset / "Annotations").glob("*.xml"):
        with Image.open(dataset / "JPEGImages" / (xml_path.stem + ".jpg")) as image:
            assert image.size == (128, 128) and image.mode == "RGB"
        objects = read_objects(xml_path)
        assert 1 <= len(objects) <= SMALL.max_objects
        for label, x0, y0, x1, y1 in objects:
            assert label in SMALL.classes
            assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 128


def test_objects_cover_small_medium_and_large_scales_and_all_classes(tmp_path):
    params = SampleParams(num_images=60, image_size=256)
    sample.generate(params, tmp_path / "voc")
    objects = [o for p in (tmp_path / "voc/Annotations").glob("*.xml") for o in read_objects(p)]
    areas = [(x1 - x0) * (y1 - y0) for _, x0, y0, x1, y1 in objects]
    assert any(a < 32**2 for a in areas)
    assert any(32**2 <= a < 96**2 for a in areas)
    assert any(a >= 96**2 for a in areas)
    assert {o[0] for o in objects} == set(params.classes)


def test_some_objects_overlap(tmp_path):
    sample.generate(SampleParams(num_images=40, image_size=128), tmp_path / "voc")
    overlapping = 0
    for xml_path in (tmp_path / "voc/Annotations").glob("*.xml"):
        boxes = [sample.ObjectAnnotation(*o) for o in read_objects(xml_path)]
        overlapping += any(sample.iou(a, b) > 0 for i, a in enumerate(boxes) for b in boxes[:i])
    assert overlapping > 0


def test_same_params_give_identical_bytes_and_another_seed_differs(dataset, tmp_path):
    sample.generate(SMALL, tmp_path / "again")
    assert digest(tmp_path / "again") == digest(dataset)
    sample.generate(SampleParams(**{**SMALL.__dict__, "seed": 4}), tmp_path / "other")
    assert digest(tmp_path / "other") != digest(dataset)


def test_each_shape_fills_its_box(tmp_path):
    """Every class is drawn touching all four sides of its box (tight boxes)."""
    for label in ("circle", "square", "triangle", "star", "cross", "diamond"):
        image = Image.new("RGB", (64, 64), (0, 0, 0))
        box = sample.ObjectAnnotation(label, 10, 12, 50, 44)
        sample.draw_shape(sample.ImageDraw.Draw(image), box, (200, 120, 40))
        assert image.getbbox() == (10, 12, 50, 44), label


def test_a_failed_run_leaves_the_previous_output_in_place(tmp_path, monkeypatch):
    root = tmp_path / "voc"
    sample.generate(SMALL, root)
    before = digest(root)

    def broken(*args):
        raise OSError("disk full")

    monkeypatch.setattr(sample, "write_voc_image", broken)
    with pytest.raises(OSError):
        sample.generate(SampleParams(num_images=12), root)
    assert digest(root) == before


def test_no_labelled_object_is_hidden_under_later_ones(tmp_path):
    """Objects are drawn in annotation order; a later one may cover at most 25% of an earlier box."""
    sample.generate(SampleParams(num_images=60, image_size=128), tmp_path / "voc")
    for xml_path in (tmp_path / "voc/Annotations").glob("*.xml"):
        boxes = [sample.ObjectAnnotation(*o) for o in read_objects(xml_path)]
        for i, earlier in enumerate(boxes):
            for later in boxes[i + 1:]:
                assert sample.intersection(earlier, later) <= 0.25 * earlier.area, xml_path.name


def test_labelled_objects_contrast_with_their_background():
    rng = sample.np.random.default_rng(0)
    for shade in (0, 90, 128, 200, 255):
        image = Image.new("RGB", (64, 64), (shade, shade // 2, 255 - shade))
        box = sample.ObjectAnnotation("circle", 8, 8, 40, 40)
        for _ in range(20):
            color = sample.contrasting_color(rng, image, box)
            distance = sample.np.linalg.norm(
                sample.np.subtract(color, (shade, shade // 2, 255 - shade)))
            assert distance >= sample.MIN_CONTRAST


def test_a_folder_not_written_by_the_project_is_never_replaced(tmp_path):
    from pipeline.core.errors import PipelineError

    root = tmp_path / "voc"
    root.mkdir()
    (root / "thesis.tex").write_text("years of work")
    with pytest.raises(PipelineError, match="not written by this project"):
        sample.generate(SMALL, root)
    assert sorted(p.name for p in root.iterdir()) == ["thesis.tex"]
    assert not (tmp_path / "voc.partial").exists()
