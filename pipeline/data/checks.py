"""Per-image checks and fixes of the convert stage: pure functions, run inside Beam's workers.

:func:`prepare_image` loads one image (fully decoded, so truncated or corrupt files are caught
here and not in training), fixes what can be fixed (EXIF orientation, colour mode, 16-bit,
boxes outside the image) and skips what cannot. Every fix or skip becomes an :class:`Issue`;
the reasons and their actions are listed in :data:`REASONS`.
"""
from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass, replace
from typing import NamedTuple

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from PIL import Image, ImageOps

from pipeline.core.records import ImageRecord, ObjectAnnotation, is_inside, link_leaving
from pipeline.data.images import ImageTooLarge, open_image, to_rgb
from pipeline.data.labelmap import LabelMap

EXIF_ORIENTATION = 0x0112
#: Every issue reason -> its action: ``skipped`` (the image), ``fixed``, ``dropped_box`` or
#: ``suspicious`` (written as it is, worth a look).
REASONS = {
    "missing_annotation": "skipped", "bad_annotation": "skipped", "unsafe_annotation": "skipped",
    "unsafe_path": "skipped", "unsafe_link": "skipped", "missing_image": "skipped",
    "corrupt_image": "skipped", "image_too_large": "skipped",
    "size_mismatch": "skipped or fixed (data.size_mismatch)", "size_missing": "fixed",
    "exif_rotated": "fixed", "exif_orientation_ignored": "fixed", "converted_to_rgb": "fixed",
    "reencoded_as_jpeg": "fixed", "box_clipped": "fixed",
    "empty_box": "dropped_box", "non_finite_box": "dropped_box", "unknown_label": "dropped_box",
    "leakage": "suspicious",
    "duplicate_image": "suspicious",
    # YOLO labels: a line that is not 'class cx cy w h', a class id without a name, an image
    # without a label file (written as a background image)
    "class_id_out_of_range": "skipped", "no_label_file": "suspicious",
}

#: The fixes that re-encode the image (every other image is stored as its own bytes).
REENCODING_REASONS = frozenset({"exif_rotated", "converted_to_rgb", "reencoded_as_jpeg"})


@dataclass(frozen=True)
class Issue:
    """One fix, skip or suspicion about one image (``file``) of one split."""

    file: str
    split: str
    reason: str
    action: str
    detail: str = ""


class Prepared(NamedTuple):
    """One image ready to write: record with real size and clean boxes, JPEG, content hash."""

    record: ImageRecord
    jpeg: bytes
    content_sha256: str



def prepare_image(
    record: ImageRecord, label_map: LabelMap, issues: list[Issue], size_mismatch: str = "skip",
) -> Prepared | None:
    """Load, check and fix one image; None when it is skipped.

    Every fix or skip is appended to ``issues``. ``size_mismatch`` is the policy for a declared
    size that differs from the real one: ``skip`` the image, or ``rescale`` its boxes.
    """
    if not _usable_reference(record, issues):
        return None
    data = _read_bytes(record, issues)
    decoded = _decode(record, data, issues) if data is not None else None
    if decoded is None:
        return None
    image, size = decoded
    oriented = apply_orientation(record, image, issues) if image is not None else None
    scale = check_size(record, oriented.size if oriented else size, issues, size_mismatch)
    if scale is None:
        return None
    if oriented is None:  # an upright RGB JPEG: its own bytes are stored
        jpeg, sha = data, hashlib.sha256(data).hexdigest()
    else:
        try:
            jpeg, sha = rgb_jpeg(record, oriented, data, issues, rotated=oriented is not image)
        except (OSError, ValueError) as err:  # a mode Pillow cannot turn into RGB
            issues.append(_issue(record, "corrupt_image", "skipped", _one_line(err)))
            return None
        size = oriented.size
    objects = clean_objects(rescale(record, scale, issues), *size, label_map, issues)
    return Prepared(replace(record, width=size[0], height=size[1], objects=objects), jpeg, sha)


def stored_jpeg_sha256(prepared: Prepared, issues: list[Issue]) -> str:
    """The sha256 of the JPEG to store (``image/key/sha256``), given the image's ``issues``:
    its content hash when its own bytes are stored (hashed once), else the new bytes' hash."""
    if REENCODING_REASONS.isdisjoint(issue.reason for issue in issues):
        return prepared.content_sha256
    return hashlib.sha256(prepared.jpeg).hexdigest()


def _issue(record: ImageRecord, reason: str, action: str, detail: str = "") -> Issue:
    return Issue(file_name(record), record.split, reason, action, detail)


def file_name(record: ImageRecord) -> str:
    """The image's file name (without folders), as the report names it."""
    return record.image_path.replace("\\", "/").rsplit("/", 1)[-1]


def _usable_reference(record: ImageRecord, issues: list[Issue]) -> bool:
    """False (and reported) when the reader found a problem or the path leaves the root (by
    ``..``, an absolute path or a symbolic link); the report names the annotation file. A
    reader's suspicion (e.g. ``no_label_file``) is reported and the image kept."""
    if record.problem:
        reason, _, detail = record.problem.partition(": ")
        # A reader's problem skips the image, except a suspicion: reported, image written.
        action = "suspicious" if REASONS.get(reason) == "suspicious" else "skipped"
        issues.append(_issue(record, reason, action, detail))
        if action == "skipped":
            return False
    named_by = f"{record.annotation} refers to " if record.annotation else ""
    if not is_inside(record.image_path, record.root):
        issues.append(_issue(record, "unsafe_path", "skipped", f"{named_by}{record.image_path}, "
                             f"which leaves the dataset folder {record.root}"))
        return False
    target = link_leaving(record.image_path, record.root)
    if target is not None:
        issues.append(_issue(record, "unsafe_link", "skipped", f"{named_by}{record.image_path}, "
                             f"a symbolic link to {target}, outside the dataset folder "
                             f"{record.root}"))
        return False
    return True


def _read_bytes(record: ImageRecord, issues: list[Issue]) -> bytes | None:
    try:  # FileSystems: the same code reads local, gs:// or s3:// paths on any runner
        with FileSystems.open(record.image_path,
                              compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            return handle.read()
    except Exception as err:  # noqa: BLE001 - Beam wraps I/O errors in its own types
        issues.append(_issue(record, "missing_image", "skipped", _one_line(err)))
        return None


def _decode(
    record: ImageRecord, data: bytes, issues: list[Issue]
) -> tuple[Image.Image | None, tuple[int, int]] | None:
    """(image, stored size), or None (reported) when the data is not a complete image.

    The image is None for an upright RGB JPEG, which is stored as its own bytes and only
    validated here: decoded at 1/8 scale, for which libjpeg still reads and checks every
    compressed block (a truncated or corrupt file fails exactly as in a full decode) at 2.5x
    less CPU. Anything else is fully decoded for the fixes that follow.
    """
    try:
        image = open_image(data, file_name(record))
        size = image.size
        validate_only = (image.format == "JPEG" and image.mode == "RGB"
                         and image.getexif().get(EXIF_ORIENTATION, 1) == 1)
        if validate_only:
            image.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
        image.load()  # decodes: a truncated or corrupt file fails here, not in training
        return (None if validate_only else image), size
    except ImageTooLarge as err:
        issues.append(_issue(record, "image_too_large", "skipped", str(err)))
        return None
    except (OSError, SyntaxError, ValueError) as err:
        issues.append(_issue(record, "corrupt_image", "skipped", _one_line(err)))
        return None


def _one_line(err: Exception) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())[:300]


def apply_orientation(record: ImageRecord, image: Image.Image, issues: list[Issue]) -> Image.Image:
    """The image in the orientation its boxes refer to, deciding by the declared size.

    With an EXIF orientation that swaps width and height (5-8), a declared size equal to the
    stored one means the annotator saw the stored pixels: they are kept (TensorFlow ignores
    EXIF). Otherwise (rotated size declared, no size, a square image, or a flip / 180 degree
    turn where size cannot tell) the orientation is applied, as image viewers and annotation
    tools do when they show the image.
    """
    orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    if orientation not in range(2, 9):
        return image
    stored = image.size
    if orientation >= 5 and (record.width, record.height) == stored and stored[0] != stored[1]:
        issues.append(_issue(record, "exif_orientation_ignored", "fixed",
                             f"EXIF orientation {orientation}, but the declared size "
                             f"{stored[0]}x{stored[1]} is the stored one: stored pixels kept"))
        return image
    rotated = ImageOps.exif_transpose(image)
    issues.append(_issue(record, "exif_rotated", "fixed", f"EXIF orientation {orientation} "
                         f"applied: {stored[0]}x{stored[1]} -> {rotated.width}x{rotated.height}"))
    return rotated


def check_size(record: ImageRecord, size: tuple[int, int], issues: list[Issue],
               size_mismatch: str = "skip") -> tuple[float, float] | None:
    """Box scale factors (1, 1 normally), or None when the image is skipped.

    Declared size missing -> the real one is used. Different -> by policy: ``skip`` (the boxes
    cannot be trusted) or ``rescale`` (boxes scaled by real / declared size).
    """
    declared = (record.width, record.height)
    if declared == size:
        return 1.0, 1.0
    if 0 in declared:
        issues.append(_issue(record, "size_missing", "fixed", f"using real size {size}"))
        return 1.0, 1.0
    detail = f"annotation says {declared[0]}x{declared[1]}, image is {size[0]}x{size[1]}"
    if size_mismatch == "rescale":
        issues.append(_issue(record, "size_mismatch", "fixed", detail + ": boxes rescaled"))
        return size[0] / declared[0], size[1] / declared[1]
    issues.append(_issue(record, "size_mismatch", "skipped", detail))
    return None


def rescale(record: ImageRecord, scale: tuple[float, float], issues: list[Issue]) -> ImageRecord:
    """The record with its boxes multiplied by ``scale`` (x, y)."""
    if scale == (1.0, 1.0):
        return record
    sx, sy = scale
    objects = tuple(replace(o, xmin=o.xmin * sx, xmax=o.xmax * sx, ymin=o.ymin * sy,
                            ymax=o.ymax * sy) for o in record.objects)
    return replace(record, objects=objects)


def rgb_jpeg(
    record: ImageRecord, image: Image.Image, data: bytes, issues: list[Issue],
    rotated: bool = False,
) -> tuple[bytes, str]:
    """(JPEG bytes, sha256 of the source bytes): the original bytes when they already are an
    RGB JPEG in the right orientation, else the image re-encoded as one."""
    sha = hashlib.sha256(data).hexdigest()
    if image.format == "JPEG" and image.mode == "RGB" and not rotated:
        return data, sha  # no re-encoding: no extra JPEG loss, and much faster
    if image.mode != "RGB":
        issues.append(_issue(record, "converted_to_rgb", "fixed", f"mode {image.mode}"))
    source_format = image.format or Image.open(io.BytesIO(data)).format
    if source_format != "JPEG":
        issues.append(_issue(record, "reencoded_as_jpeg", "fixed", f"format {source_format}"))
    buffer = io.BytesIO()
    to_rgb(image).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue(), sha


def clean_objects(
    record: ImageRecord, width: int, height: int, label_map: LabelMap, issues: list[Issue]
) -> tuple[ObjectAnnotation, ...]:
    """Drop unknown labels, non-finite and empty boxes, clip the rest to the image."""
    kept = []
    for index, obj in enumerate(record.objects):
        if not all(map(math.isfinite, (obj.xmin, obj.ymin, obj.xmax, obj.ymax))):
            issues.append(_issue(record, "non_finite_box", "dropped_box", _where(index, obj)))
            continue  # NaN passes every comparison below: it must never reach a record
        clipped = clip_box(obj, width, height)
        if obj.label not in label_map:
            issues.append(_issue(record, "unknown_label", "dropped_box", _where(index, obj)))
        elif clipped.xmax <= clipped.xmin or clipped.ymax <= clipped.ymin:
            issues.append(_issue(record, "empty_box", "dropped_box",
                                 f"{_where(index, obj)}: no area inside the image"))
        else:
            if clipped != obj:
                issues.append(_issue(record, "box_clipped", "fixed",
                                     f"{_where(index, obj)} -> {_box(clipped)}"))
            kept.append(clipped)
    return tuple(kept)


def _where(index: int, obj: ObjectAnnotation) -> str:
    # Only built for an issue: formatting every box cost 12% of the per-image checks.
    return f"object {index} {obj.label!r} box {_box(obj)}"


def clip_box(obj: ObjectAnnotation, width: int, height: int) -> ObjectAnnotation:
    """The box limited to ``[0, width] x [0, height]``."""
    if 0 <= obj.xmin <= obj.xmax <= width and 0 <= obj.ymin <= obj.ymax <= height:
        return obj  # the common case, without building a copy
    return replace(
        obj,
        xmin=min(max(obj.xmin, 0.0), width), xmax=min(max(obj.xmax, 0.0), width),
        ymin=min(max(obj.ymin, 0.0), height), ymax=min(max(obj.ymax, 0.0), height),
    )


def _box(obj: ObjectAnnotation) -> list[float]:
    return [round(v, 2) for v in (obj.xmin, obj.ymin, obj.xmax, obj.ymax)]
