"""Write a dataset, read by any of the project's readers, as an Ultralytics YOLO txt dataset.

The written folder (the layout :mod:`pipeline.data.readers.yolo` reads back):

- ``images/{train,val,test}/<image id><ext>``: hard links to the dataset's images when the
  convert stage would store their own bytes, else (another filesystem, a remote dataset) a copy;
  the JPEG the convert stage stores when it re-encodes one (EXIF rotation, colour mode, PNG...).
  A JPEG without its end-of-image marker is copied, never linked: Ultralytics "restores" such a
  file by saving over it, which through a link would change the dataset's own file;
- ``labels/{split}/<image id>.txt``: one ``class cx cy w h`` line per box, normalised by the
  image's size, 6 decimals; the class is the label-map id minus 1 (so YOLO's class 0 is the
  project's id 1);
- ``data.yaml``: ``path`` (this folder), ``train``, ``val``, ``test`` and ``names``.

What a model trained on it sees is what the convert stage writes into the TFRecords: the same
splits (the split lists, or the id hash with ``data.val_fraction`` / ``data.test_fraction``,
and a missing val / test split derived from train), and every image through the convert stage's
own per-image checks (:func:`pipeline.data.checks.prepare_image`: real size, EXIF orientation,
boxes clipped, unknown labels and empty boxes dropped). An image the reader or the checks reject
is not written: it is counted by reason in :attr:`YoloDataset.skipped`.
"""
from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import yaml

from pipeline.core import files
from pipeline.core.params import DataParams
from pipeline.core.records import SPLITS, ImageRecord, ObjectAnnotation
from pipeline.data import checks
from pipeline.data.conversion import read_dataset
from pipeline.data.labelmap import LabelMap, label_map_for
from pipeline.data.readers.splits import derive_missing_splits
from pipeline.data.readers.voc import IMAGE_EXTENSIONS
from pipeline.data.readers.yolo import LABEL_SUFFIX, NAMES_FILES, labels_folder

IMAGES_DIR = "images"
DATA_YAML = NAMES_FILES[0]
#: Decimals of the normalised coordinates: 1e-6 of a 4000-pixel image is 0.004 pixels.
DECIMALS = 6
#: The suffix of an image the convert stage re-encodes (stored as a JPEG).
JPEG_SUFFIX = ".jpg"
JPEG_END_MARKER = b"\xff\xd9"
_IMAGE_SUFFIXES = {ext.lower() for ext in IMAGE_EXTENSIONS}


@dataclass
class YoloDataset:
    """What :func:`write_yolo` wrote: class names by YOLO index, images per split, and the
    images not written by reason. ``sources`` maps each written image (its path relative to
    ``root``) to the file name the convert stage and the report give it."""

    root: Path
    names: tuple[str, ...]
    images: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    sources: dict[str, str] = field(default_factory=dict)


def write_yolo_dataset(data: DataParams, output: str | Path) -> YoloDataset:
    """The dataset of ``data`` (its format's reader, the convert stage's splits) written as a
    YOLO dataset into ``output`` (replaced when this project wrote it)."""
    records = list(read_dataset(data))
    records, _ = derive_missing_splits(records, data.val_fraction, data.test_fraction)
    return write_yolo(records, output, data.classes, data.size_mismatch, inputs=[data.root])


def write_yolo(records: Sequence[ImageRecord], output: str | Path, classes: Sequence[str] = (),
               size_mismatch: str = "skip", inputs: Iterable[str | Path] = ()) -> YoloDataset:
    """Write ``records`` (with their splits) as a YOLO dataset into ``output``, staged: the
    folder appears only once complete. ``classes``: the label map's order (``data.classes``;
    empty: the sorted labels found), ``size_mismatch``: the convert stage's policy."""
    label_map = label_map_for(classes, {obj.label for r in records for obj in r.objects})
    output = Path(output).resolve()
    written = YoloDataset(output, tuple(label_map))
    with files.staged_output(output, inputs) as staging:
        for split in SPLITS:  # data.yaml names every split's folder, even an empty one
            images = staging / IMAGES_DIR / split
            for folder in (images, labels_folder(images)):
                folder.mkdir(parents=True)
        for record in records:
            reason = _write_image(record, label_map, size_mismatch, staging, written)
            if reason:
                written.skipped[reason] += 1
        files.write_text_atomic(staging / DATA_YAML, data_yaml(output, label_map))
    return written


def _write_image(record: ImageRecord, label_map: LabelMap, size_mismatch: str, root: Path,
                 written: YoloDataset) -> str | None:
    """Write one image and its labels into ``root``; the reason when it is skipped."""
    issues: list[checks.Issue] = []
    prepared = checks.prepare_image(record, label_map, issues, size_mismatch)
    if prepared is None:
        return next(i.reason for i in issues if i.action == "skipped")
    own_bytes = checks.REENCODING_REASONS.isdisjoint(issue.reason for issue in issues)
    suffix = Path(record.image_path).suffix if own_bytes else JPEG_SUFFIX
    relative = image_path(record, suffix)
    image = root / relative
    if not files.is_within(image, root / IMAGES_DIR / record.split):
        return "unsafe_path"
    if image.exists():
        return "duplicate_image_id"
    linkable = own_bytes and prepared.jpeg.endswith(JPEG_END_MARKER)
    _store_image(record.image_path if linkable else None, prepared.jpeg, image)
    label = labels_folder(image.parent) / f"{image.stem}{LABEL_SUFFIX}"
    files.write_text_atomic(label, label_lines(prepared.record, label_map))
    written.images[record.split] += 1
    written.sources[relative.as_posix()] = checks.file_name(record)
    return None


def image_path(record: ImageRecord, suffix: str) -> PurePosixPath:
    """``images/<split>/<image id><suffix>`` (an image extension ending the id is dropped)."""
    name = PurePosixPath(record.image_id.replace("\\", "/"))
    if name.suffix.lower() in _IMAGE_SUFFIXES:
        name = name.with_suffix("")
    return PurePosixPath(IMAGES_DIR, record.split, f"{name}{suffix}")


def _store_image(source: str | None, jpeg: bytes, target: Path) -> None:
    """A hard link to ``source`` when there is one and the filesystem allows it, else the
    bytes the convert stage stores (the original file's own bytes when it stores those)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if source is not None:
        try:
            os.link(source, target)
            return
        except OSError:  # another filesystem, a remote path, no link permission: copy
            pass
    with files.atomic_file(target) as temporary:
        temporary.write_bytes(jpeg)


def label_lines(record: ImageRecord, label_map: LabelMap) -> str:
    """The label file of ``record``: ``class cx cy w h`` per box (normalised, 6 decimals)."""
    return "".join(f"{label_map[obj.label] - 1} {_normalised(obj, record.width, record.height)}\n"
                   for obj in record.objects)


def _normalised(obj: ObjectAnnotation, width: int, height: int) -> str:
    values = ((obj.xmin + obj.xmax) / 2 / width, (obj.ymin + obj.ymax) / 2 / height,
              (obj.xmax - obj.xmin) / width, (obj.ymax - obj.ymin) / height)
    return " ".join(f"{value:.{DECIMALS}f}" for value in values)


def data_yaml(root: Path, label_map: Mapping[str, int]) -> str:
    """Ultralytics' ``data.yaml``: the folder, one images folder per split, the class names."""
    config = {"path": str(root), **{split: f"{IMAGES_DIR}/{split}" for split in SPLITS},
              "names": {class_id - 1: name for name, class_id in label_map.items()}}
    return yaml.safe_dump(config, sort_keys=False)
