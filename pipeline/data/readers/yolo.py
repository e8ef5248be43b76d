"""Read a YOLO txt dataset (the Ultralytics layout) into :class:`~pipeline.core.records.ImageRecord`s.

Labels: one ``labels/<image>.txt`` per image, one ``class cx cy w h`` line per object, the box
centre and size normalised to [0, 1] by the image's width and height; the class is an index into
the names of ``data.yaml`` (``names:`` a list, or an ``{id: name}`` mapping) or, without it, of
``classes.txt`` (one name per line). An image's label file is its path with the last ``images``
folder replaced by ``labels`` and the extension by ``.txt`` (as Ultralytics finds it).

Layouts (:func:`find_layout`), the first that applies:

- ``data.yaml`` names split folders (``train:``, ``val:``, ``test:``, a folder or a list of
  folders, relative to the root; its ``path:`` is ignored, as it names the author's machine,
  and a leading ``../`` is dropped when the folder is not found otherwise, as Roboflow writes
  ``../train/images``);
- split folders: ``images/{train,val,test}`` (``val`` also ``valid``) with ``labels/`` beside
  them, or ``{train,valid,test}/images`` with ``.../labels``;
- flat: ``images/`` + ``labels/`` (or ``--images`` and ``--annotations`` folders, which may be
  one folder), each image's split from a hash of its id (its path below the images folder,
  without extension), as for the other formats.

Boxes become absolute pixels with the image's size read from its header here (no pixel is
decoded; the EXIF orientation is applied to the size, as Ultralytics labels refer to the image
as shown). What cannot be used is never dropped silently, it becomes the record's ``problem``
and so an entry of the data report: a malformed line (``bad_annotation``) or a class id with no
name (``class_id_out_of_range``) skips the image; a label file without its image is a
``missing_image``; an image without a label file is written as a background image and reported
(``no_label_file``); an empty label file is a deliberate background. Coordinates outside [0, 1]
are checked like any format's boxes in the Beam stage: clipped to the image (``box_clipped``)
or dropped when nothing is left (``empty_box``), and non-finite ones dropped (``non_finite_box``).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from pipeline.core.errors import PipelineError
from pipeline.core.records import SPLITS, ImageRecord, ObjectAnnotation, hash_split
from pipeline.data import storage
from pipeline.data.images import ImageTooLarge, open_image
from pipeline.data.readers.coco import SPLIT_FOLDERS, first_problem
from pipeline.data.readers.voc import IMAGE_EXTENSIONS

if TYPE_CHECKING:  # annotations only: readers do not need the params module at run time
    from pipeline.core.params import DataParams

#: Where the class names are, in order of preference (in the dataset root).
NAMES_FILES = ("data.yaml", "classes.txt")
LABEL_SUFFIX = ".txt"
#: EXIF orientations that swap width and height (90 and 270 degree turns).
SWAPPING_ORIENTATIONS = (5, 6, 7, 8)
EXIF_ORIENTATION = 0x0112
_SUFFIXES = {ext.lower() for ext in IMAGE_EXTENSIONS}


@dataclass(frozen=True)
class ImageFolder:
    """Images below ``images`` (searched recursively), their labels below ``labels``."""

    images: Path
    labels: Path
    split: str | None  # None: each image's split by hash


def _names(value: Any) -> dict[int, str]:
    """``names:`` as {id: name}, from a list (ids 0, 1, ...) or an {id: name} mapping."""
    if isinstance(value, list):
        value = dict(enumerate(value))
    if not value or not isinstance(value, dict) or not all(
            isinstance(k, int) and not isinstance(k, bool) and isinstance(n, (str, int))
            and str(n).strip() for k, n in value.items()):
        raise ValueError("must be a non-empty list of class names or an {id: name} mapping")
    return {k: str(n) for k, n in value.items()}


Folders = str | list[str] | None


class DataYaml(BaseModel):
    """The keys of an Ultralytics ``data.yaml`` that the reader uses."""

    model_config = ConfigDict(extra="allow")  # nc, path, download, roboflow, ... are ignored

    names: Annotated[Any, AfterValidator(_names)]
    train: Folders = None
    val: Folders = None
    test: Folders = None


def read_dataset(root: Path, data: DataParams, images: str | None = None,
                 annotations: str | None = None) -> list[ImageRecord]:
    """The registry's entry (:class:`pipeline.data.readers.Reader`): :func:`read_yolo`; local
    datasets only (it reads every image's header for its size)."""
    remote = [str(p) for p in (root, images, annotations) if p and storage.is_remote(p)]
    if remote:
        raise PipelineError(f"data.format yolo reads local folders only, got {remote[0]}: copy "
                            "the dataset to a local folder (voc and coco read s3:// and gs://)")
    return read_yolo(root, images=images, annotations=annotations,
                     val_fraction=data.val_fraction, test_fraction=data.test_fraction)


def read_yolo(
    root: str | Path, splits: Sequence[str] = SPLITS, *, images: str | Path | None = None,
    annotations: str | Path | None = None, val_fraction: float = 0.1,
    test_fraction: float = 0.1,
) -> list[ImageRecord]:
    """Every image (and every label file without an image) of the dataset at ``root``."""
    root = Path(root).resolve()
    names, config = read_names(_names_folders(root, images, annotations))
    records = []
    for folder in find_layout(root, config, images, annotations):
        for record in read_folder(folder, names, (val_fraction, test_fraction)):
            if record.split in splits:
                records.append(record)
    return records


def _names_folders(root: Path, images, annotations) -> list[Path]:
    """Where data.yaml / classes.txt may be: the root, else beside the explicit folders."""
    explicit = [Path(p).resolve() for p in (annotations, images) if p]
    return [root] + [f for p in explicit for f in (p, p.parent)]


def read_names(folders: Sequence[Path]) -> tuple[dict[int, str], DataYaml | None]:
    """Class names by id, and the validated data.yaml when the names came from one."""
    for folder in folders:
        for name in NAMES_FILES:
            path = folder / name
            if path.is_file():
                return _names_from(path)
    places = ", ".join(str(f) for f in dict.fromkeys(folders))
    raise PipelineError(f"no class names for the YOLO dataset: none of {list(NAMES_FILES)} "
                        f"found in {places}")


def _names_from(path: Path) -> tuple[dict[int, str], DataYaml | None]:
    if path.suffix != ".yaml":
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        if not any(names):
            raise PipelineError(f"{path} lists no class names")
        return dict(enumerate(n for n in names if n)), None
    try:
        config = DataYaml.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except yaml.YAMLError as err:
        raise PipelineError(f"{path} is not valid YAML: {' '.join(str(err).split())}") from None
    except ValidationError as err:
        raise PipelineError(first_problem(path, err)) from None
    return config.names, config


def find_layout(root: Path, config: DataYaml | None, images=None,
                annotations=None) -> list[ImageFolder]:
    """The image folders of the dataset, with their labels folders and splits."""
    if images or annotations:
        image_dir = _existing_dir(Path(images or annotations).resolve())
        label_dir = _existing_dir(Path(annotations).resolve()) if annotations else None
        return [ImageFolder(image_dir, label_dir or labels_folder(image_dir), None)]
    if config is not None and any((config.train, config.val, config.test)):
        return _declared_folders(root, config)
    found = [ImageFolder(f, labels_folder(f), split) for split in SPLITS
             for f in _split_image_folders(root, split)]
    if found:
        return found
    if (root / "images").is_dir():
        return [ImageFolder(root / "images", root / "labels", None)]
    raise PipelineError(
        f"{root} is not a YOLO dataset: expected images/{{train,val,test}}/ + labels/..., "
        "{train,valid,test}/images/ + .../labels/, images/ + labels/, or split folders named "
        "in data.yaml (or pass --images and --annotations)")


def _split_image_folders(root: Path, split: str) -> list[Path]:
    for name in SPLIT_FOLDERS[split]:
        for folder in (root / "images" / name, root / name / "images"):
            if folder.is_dir():
                return [folder]
    return []


def _declared_folders(root: Path, config: DataYaml) -> list[ImageFolder]:
    folders = []
    for split in SPLITS:
        entries = getattr(config, split) or []
        for entry in [entries] if isinstance(entries, str) else entries:
            folder = _declared_folder(root, split, entry)
            folders.append(ImageFolder(folder, labels_folder(folder), split))
    return folders


def _declared_folder(root: Path, split: str, entry: str) -> Path:
    """``root/<entry>``, else without leading ``../``; it must be a folder inside the root."""
    relative = Path(entry)
    stripped = Path(*[p for p in relative.parts if p != ".."]) if ".." in relative.parts else None
    for candidate in (root / relative, root / stripped if stripped else None):
        if candidate is None:
            continue
        candidate = candidate.resolve()
        if candidate.is_dir() and candidate.is_relative_to(root):
            return candidate
    raise PipelineError(f"data.yaml {split}: {entry!r} is not a folder inside {root} "
                        "(folders of images only; list files are not supported)")


def labels_folder(images: Path) -> Path:
    """The labels folder of an images folder: its last ``images`` part replaced by ``labels``
    (the folder itself when it has none: labels next to the images)."""
    parts = list(images.parts)
    for index in range(len(parts) - 1, -1, -1):
        if parts[index] == "images":
            parts[index] = "labels"
            return Path(*parts)
    return images


def _existing_dir(folder: Path) -> Path:
    if not folder.is_dir():
        raise PipelineError(f"{folder} does not exist or is not a folder")
    return folder


def read_folder(folder: ImageFolder, names: dict[int, str],
                fractions: tuple[float, float]) -> list[ImageRecord]:
    """Records of every image of ``folder``, then one per label file that has no image."""
    records, labelled = [], set()
    for image in sorted(p for p in folder.images.rglob("*") if p.suffix.lower() in _SUFFIXES):
        image_id = image.relative_to(folder.images).with_suffix("").as_posix()
        label = folder.labels / f"{image_id}{LABEL_SUFFIX}"
        labelled.add(label)
        split = folder.split or hash_split(image_id, *fractions)
        records.append(read_image(folder, image_id, image, label, split, names))
    for label in sorted(folder.labels.rglob(f"*{LABEL_SUFFIX}")):
        if label not in labelled and label.name not in NAMES_FILES:
            records.append(_orphan_label(folder, label, fractions))
    return records


def _orphan_label(folder: ImageFolder, label: Path,
                  fractions: tuple[float, float]) -> ImageRecord:
    image_id = label.relative_to(folder.labels).with_suffix("").as_posix()
    split = folder.split or hash_split(image_id, *fractions)
    return ImageRecord(image_id, str(folder.images / f"{image_id}.jpg"), 0, 0, split, (),
                       str(folder.images), annotation=str(label),
                       problem=f"missing_image: {label} has no image in {folder.images}")


def read_image(folder: ImageFolder, image_id: str, image: Path, label: Path, split: str,
               names: dict[int, str]) -> ImageRecord:
    """The record of one image: its size from the header, its boxes from its label file."""
    record = ImageRecord(image_id, str(image), 0, 0, split, (), str(folder.images),
                         annotation=str(label))
    try:
        width, height = displayed_size(image)
    except ImageTooLarge as err:
        return _with_problem(record, f"image_too_large: {err}")
    except OSError as err:  # unreadable or not an image; the Beam stage would say the same
        reason = "missing_image" if not os.path.exists(image) else "corrupt_image"
        return _with_problem(record, f"{reason}: {' '.join(str(err).split())}")
    if not label.is_file():
        return _with_problem(record, f"no_label_file: no {label}: written as a background "
                                     "image (no objects)", width, height)
    try:
        objects = parse_labels(label, names, width, height)
    except LabelError as err:
        return _with_problem(record, f"{err.reason}: {err}")
    return ImageRecord(image_id, str(image), width, height, split, objects, str(folder.images),
                       annotation=str(label))


def _with_problem(record: ImageRecord, problem: str, width: int = 0,
                  height: int = 0) -> ImageRecord:
    return ImageRecord(record.image_id, record.image_path, width, height, record.split, (),
                       record.root, problem=problem, annotation=record.annotation)


def displayed_size(image: Path) -> tuple[int, int]:
    """(width, height) of the image as shown (EXIF orientation applied), from its header."""
    with open_image(image) as opened:
        width, height = opened.size
        if opened.getexif().get(EXIF_ORIENTATION, 1) in SWAPPING_ORIENTATIONS:
            return height, width
        return width, height


class LabelError(ValueError):
    """A label file that cannot be used: ``reason`` names the report entry."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def parse_labels(label: Path, names: dict[int, str], width: int,
                 height: int) -> tuple[ObjectAnnotation, ...]:
    """The boxes of ``label`` in absolute pixels; LabelError naming the first bad line (and how
    many more there are)."""
    objects, problems = [], []
    lines = label.read_text(encoding="utf-8", errors="replace").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            objects.append(_parse_line(line, names, width, height))
        except LabelError as err:
            problems.append((err.reason, f"{label.name} line {number}: {err}"))
    if problems:
        reason, detail = problems[0]
        more = f" (and {len(problems) - 1} more bad lines)" if len(problems) > 1 else ""
        raise LabelError(reason, detail + more)
    return tuple(objects)


def _parse_line(line: str, names: dict[int, str], width: int, height: int) -> ObjectAnnotation:
    fields = line.split()
    shown = " ".join(line.split())[:80]
    if len(fields) != 5:
        raise LabelError("bad_annotation", f"{shown!r}: expected 'class cx cy w h' (5 numbers; "
                                           "segmentation polygons are not supported)")
    try:
        class_id = _class_id(fields[0])
        cx, cy, w, h = (float(v) for v in fields[1:])
    except ValueError:
        raise LabelError("bad_annotation", f"{shown!r}: not numbers") from None
    if class_id not in names:
        raise LabelError("class_id_out_of_range", f"class id {class_id} has no name (names: "
                                                  f"{min(names)}..{max(names)})")
    return ObjectAnnotation(names[class_id], (cx - w / 2) * width, (cy - h / 2) * height,
                            (cx + w / 2) * width, (cy + h / 2) * height)


def _class_id(text: str) -> int:
    value = float(text)  # "3" and "3.0" (some exporters write floats)
    if not value.is_integer():
        raise ValueError(text)
    return int(value)
