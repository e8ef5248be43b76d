"""pipeline.data.checks: per-image fixes and skips, one tiny fixture per case, exact outcome."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.core.records import ImageRecord, ObjectAnnotation
from pipeline.data.checks import Issue, clean_objects, prepare_image

from tests.data.helpers import save


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


def test_reader_problem_skips_the_image(tmp_path: Path) -> None:
    record = ImageRecord("x", save(tmp_path / "x.jpg"), 40, 30, "val",
                         problem="unsafe_annotation: x.xml: declares a DTD")
    issues: list[Issue] = []
    assert prepare_image(record, {}, issues) is None
    assert issues == [Issue("x.jpg", "val", "unsafe_annotation", "skipped", "x.xml: declares a DTD")]


def _noise_jpeg(path: Path, size: tuple[int, int] = (400, 300)) -> bytes:
    """A JPEG whose entropy-coded data fills most of the file (noise does not compress)."""
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG", quality=90)
    return path.read_bytes()


def test_cheap_validation_still_catches_truncated_and_corrupt_middle_jpegs(
        tmp_path: Path, monkeypatch) -> None:
    """Upright RGB JPEGs are validated by a reduced-size decode (``Image.draft``), which still
    walks every entropy-coded byte: a file cut short, or with a marker (here a second SOI) in the
    middle of its compressed data, is skipped exactly as a full decode would skip it."""
    from PIL.JpegImagePlugin import JpegImageFile

    drafted: list[str] = []
    draft = JpegImageFile.draft
    monkeypatch.setattr(JpegImageFile, "draft", lambda self, mode, size: (
        drafted.append(mode), draft(self, mode, size))[1])
    data = _noise_jpeg(tmp_path / "ok.jpg")
    middle = len(data) // 2
    (tmp_path / "cut.jpg").write_bytes(data[:middle])
    (tmp_path / "mid.jpg").write_bytes(data[:middle] + b"\xff\xd8" + data[middle + 2:])
    issues: list[Issue] = []
    kept = [prepare_image(ImageRecord(name, str(tmp_path / name), 400, 300, "train"), {},
                          issues) is not None for name in ("ok.jpg", "cut.jpg", "mid.jpg")]
    assert kept == [True, False, False]
    assert [(i.file, i.reason, i.action) for i in issues] == [
        ("cut.jpg", "corrupt_image", "skipped"), ("mid.jpg", "corrupt_image", "skipped")]
    assert drafted == ["RGB"] * 3  # all three took the cheap path


def test_a_stored_jpeg_is_hashed_once_and_a_reencoded_one_by_its_new_bytes(
        tmp_path: Path, monkeypatch) -> None:
    """``image/key/sha256`` is the stored JPEG's hash; for an image stored as its own bytes it
    is the content hash the checks computed (one sha256 per image, not two)."""
    import hashlib

    from pipeline.data.checks import stored_jpeg_sha256
    from pipeline.data.tfexample import build_example

    calls: list[int] = []
    sha256 = hashlib.sha256
    monkeypatch.setattr(hashlib, "sha256", lambda data=b"": (calls.append(1), sha256(data))[1])
    for path, hashes in ((save(tmp_path / "a.jpg"), 1), (save(tmp_path / "g.png", fmt="PNG"), 2)):
        calls.clear()
        issues: list[Issue] = []
        prepared = prepare_image(ImageRecord("x", path, 40, 30, "train"), {}, issues)
        example = build_example(prepared.record, prepared.jpeg, {},
                                stored_jpeg_sha256(prepared, issues))
        key = example.features.feature["image/key/sha256"].bytes_list.value[0].decode()
        assert key == sha256(prepared.jpeg).hexdigest()
        assert len(calls) == hashes, path
