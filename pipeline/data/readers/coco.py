"""Read a COCO-format dataset into :class:`~pipeline.core.records.ImageRecord`s (detectron2 style).

Layouts (:func:`read_coco`):

- one file per split (as Roboflow and most exporters write it): one folder per split,
  ``train/``, ``val/`` (or ``valid/``), ``test/``, each holding its images and a COCO JSON
  (``data.coco_annotation_file``); or, as the official COCO release, per-split files named
  for their split in ``annotations/`` (or ``--annotations DIR``), e.g.
  ``instances_val2017.json`` with its images in ``val2017/`` (or the ``--images`` folder);
- one file to be split: a single COCO JSON (``--annotations FILE``, or the only ``*.json`` in the
  root) with its images folder (``--images DIR``, else ``images/`` next to it, else its own
  folder); each image's split comes from a hash of its file name
  (:func:`~pipeline.core.records.hash_split`).

Category ids may have gaps or start at 0: only the *names* leave this module (ids are assigned
later by the label map), so a placeholder category without annotations (Roboflow's
supercategory) simply never appears. Ids may be any JSON integer (above 2^32 too) or a string
holding one, and numbers may come as strings (``"416"``), as some exporters write them.
``bbox`` ``[x, y, w, h]`` becomes absolute XYXY; ``iscrowd`` is kept; images without
annotations are kept as negatives. A ``file_name`` that leaves the images folder is never
followed: the convert stage refuses and reports it.

Every file is validated (pydantic, :class:`CocoFile`) before any work: not an object, a missing
``images`` / ``annotations`` / ``categories``, an id that is not an integer, a ``bbox`` that is
not 4 numbers, a missing ``file_name``... stop with one line naming the file, the key and the
value. Non-finite box numbers pass: the convert stage drops and reports those boxes.
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from pipeline.core.errors import PipelineError
from pipeline.core.records import SPLITS, ImageRecord, ObjectAnnotation, hash_split
from pipeline.data import storage

if TYPE_CHECKING:  # annotations only: readers do not need the params module at run time
    from pipeline.core.params import DataParams

#: Folder names accepted for each split, in order of preference.
SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}


def read_coco(
    root: str | Path, annotation_file: str = "_annotations.coco.json",
    splits: Sequence[str] = SPLITS, *, images: str | Path | None = None,
    annotations: str | Path | None = None, val_fraction: float = 0.1, test_fraction: float = 0.1,
) -> list[ImageRecord]:
    """Records of every split: from split folders, per-split files, or one file split by ratios."""
    per_split = split_files(storage.path(annotations) if annotations else storage.path(root) / "annotations")
    if per_split and (annotations or not any(split_folder(storage.path(root), s) for s in splits)):
        base = storage.path(images) if images else storage.path(root)
        return [record for split, path in per_split.items() if split in splits
                for record in read_coco_file(path, _split_images(base, path), split)]
    single = storage.path(annotations) if annotations else _single_json(storage.path(root), splits)
    if single is not None:
        records = read_coco_file(single, _images_dir(single, images), None,
                                 (val_fraction, test_fraction))
        return [record for record in records if record.split in splits]
    root = storage.path(root).resolve()
    folders = {split: split_folder(root, split) for split in splits}
    if not any(folders.values()):
        names = sorted({name for split in splits for name in SPLIT_FOLDERS[split]})
        raise PipelineError(f"{root} is not a COCO dataset root: none of {names} folders found "
                            "and no single COCO JSON (pass --annotations FILE)")
    return [
        record
        for split, folder in folders.items()
        if folder is not None
        for record in read_coco_file(folder / annotation_file, folder, split)
    ]


def read_dataset(root: Path, data: DataParams, images: str | None = None,
                 annotations: str | None = None) -> list[ImageRecord]:
    """The registry's entry (:class:`pipeline.data.readers.Reader`): :func:`read_coco`."""
    return read_coco(root, data.coco_annotation_file, images=images, annotations=annotations,
                     val_fraction=data.val_fraction, test_fraction=data.test_fraction)


def _single_json(root: Path, splits: Sequence[str]) -> Path | None:
    """The root's only ``*.json`` when it has no split folders (one file to be split)."""
    if not root.is_dir() or any(split_folder(root, split) for split in splits):
        return None
    files = sorted(root.glob("*.json"))
    return files[0] if len(files) == 1 else None


def split_files(folder: Path) -> dict[str, Path]:
    """Per-split COCO files in ``folder``, by name (``instances_val2017.json`` -> val), as the
    official COCO release names them; {} when ``folder`` is not a folder of such files."""
    if not folder.is_dir():
        return {}
    found: dict[str, Path] = {}
    for path in sorted(folder.glob("*.json")):
        stem = path.stem.lower()
        split = next((s for s, names in SPLIT_FOLDERS.items() if any(n in stem for n in names)),
                     None)
        if split is not None:
            found.setdefault(split, path)
    return found


def _split_images(base: Path, json_path: Path) -> Path:
    """Images of a per-split file: ``<base>/<name after '_'>`` (``val2017/``) if it exists."""
    named = base / json_path.stem.split("_", 1)[-1]
    return (named if named.is_dir() else base).resolve()


def _images_dir(json_path: Path, images: str | Path | None) -> Path:
    if images:
        return storage.path(images).resolve()
    nested = json_path.parent / "images"
    return (nested if nested.is_dir() else json_path.parent).resolve()


def split_folder(root: Path, split: str) -> Path | None:
    """The first existing folder named for ``split`` (e.g. ``valid/`` for val), else None."""
    return next((root / n for n in SPLIT_FOLDERS[split] if (root / n).is_dir()), None)


def read_coco_file(
    json_path: Path, images: Path, split: str | None, fractions: tuple[float, float] = (0.1, 0.1),
) -> list[ImageRecord]:
    """One COCO JSON; image files are resolved in ``images``; ``split`` None = split by hash."""
    coco = load_coco(json_path)
    names = {category.id: category.name for category in coco.categories}
    known_ids = {image.id for image in coco.images}
    objects: dict[int, list[ObjectAnnotation]] = defaultdict(list)
    for ann in coco.annotations:
        if ann.image_id not in known_ids or ann.category_id not in names:
            raise PipelineError(f"{json_path}: annotation {ann.id} refers to an unknown "
                                f"image_id or category_id")
        x, y, w, h = ann.bbox
        objects[ann.image_id].append(ObjectAnnotation(
            names[ann.category_id], x, y, x + w, y + h, is_crowd=bool(int(ann.iscrowd or 0))))
    return [
        _record(image, objects[image.id], images, split or hash_split(image.file_name, *fractions),
                json_path)
        for image in coco.images
    ]


def _integer(value: Any) -> int:
    """An id: a JSON integer (any size) or a string / float holding one, as exporters write."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, (str, float)):
        text = str(value).strip()
        try:
            return int(text)
        except ValueError:
            pass
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if number.is_integer():
            return int(number)
    raise ValueError("must be an integer id")


def _name(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        raise ValueError("must be a non-empty string")
    return str(value)


CocoId = Annotated[Any, AfterValidator(_integer)]


class _CocoModel(BaseModel):
    model_config = ConfigDict(extra="allow")  # exporters add keys of their own


class CocoCategory(_CocoModel):
    """One entry of ``categories``."""

    id: CocoId
    name: Annotated[Any, AfterValidator(_name)]


class CocoImage(_CocoModel):
    """One entry of ``images`` (width / height: 0 or absent = taken from the image)."""

    id: CocoId
    file_name: Annotated[str, Field(min_length=1)]
    width: Any = None
    height: Any = None


class CocoAnnotation(_CocoModel):
    """One entry of ``annotations``: ``bbox`` is ``[x, y, width, height]`` (numbers; non-finite
    values pass here and are dropped and reported by the convert stage)."""

    id: Any = None
    image_id: CocoId
    category_id: CocoId
    bbox: Annotated[list[float], Field(min_length=4, max_length=4)]
    iscrowd: Annotated[float, Field(allow_inf_nan=False)] | None = 0


class CocoFile(_CocoModel):
    """The keys of a COCO detection file that the reader uses, with their types."""

    images: list[CocoImage]
    annotations: list[CocoAnnotation]
    categories: list[CocoCategory]


def load_coco(json_path: Path) -> CocoFile:
    """The validated COCO file; PipelineError naming the file, key and value otherwise."""
    data = _load_json(json_path)
    try:
        return CocoFile.model_validate(data)
    except ValidationError as err:
        raise PipelineError(first_problem(json_path, err)) from None


def first_problem(json_path: Path, err: ValidationError) -> str:
    """One line: the file, the key and the value of the first problem pydantic found."""
    problem = err.errors()[0]
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in problem["loc"])
    got = "" if problem["type"] == "missing" else f" (got {repr(problem['input'])[:80]})"
    more = f"; {err.error_count() - 1} more problem(s)" if err.error_count() > 1 else ""
    return f"{json_path}: {where.lstrip('.')}: {problem['msg']}{got}{more}"


def _record(image: CocoImage, objects: list, folder: Path, split: str,
            json_path: Path) -> ImageRecord:
    return ImageRecord(
        image_id=image.file_name,
        image_path=str(folder / image.file_name),  # not normalised: convert refuses what leaves
        width=_size(image.width),  # 0 = unknown: taken from the image later
        height=_size(image.height),
        split=split,
        objects=tuple(objects),
        root=str(folder),
        annotation=str(json_path),
    )


def _size(value: Any) -> int:
    try:
        return int(float(value)) if value not in (None, "") else 0
    except (TypeError, ValueError):
        return 0


def _load_json(json_path: Path) -> dict:
    if not json_path.is_file():
        raise PipelineError(f"COCO annotation file {json_path} not found "
                            "(set data.coco_annotation_file to its name)")
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PipelineError(f"{json_path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise PipelineError(f"{json_path}: a COCO file must hold a JSON object")
    return data
