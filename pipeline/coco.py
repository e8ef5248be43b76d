"""Read a COCO-format dataset into :class:`~pipeline.records.ImageRecord`s (detectron2 style).

Layouts (:func:`read_coco`):

- one file per split (as Roboflow and most exporters write it): one folder per split,
  ``train/``, ``val/`` (or ``valid/``), ``test/``, each holding its images and a COCO JSON
  (``data.coco_annotation_file``); or, as the official COCO release, per-split files named
  for their split in ``annotations/`` (or ``--annotations DIR``), e.g.
  ``instances_val2017.json`` with its images in ``val2017/`` (or the ``--images`` folder);
- one file to be split: a single COCO JSON (``--annotations FILE``, or the only ``*.json`` in the
  root) with its images folder (``--images DIR``, else ``images/`` next to it, else its own
  folder); each image's split comes from a hash of its file name
  (:func:`~pipeline.records.hash_split`).

Category ids may have gaps or start at 0: only the *names* leave this module (ids are assigned
later by the label map), so a placeholder category without annotations (Roboflow's
supercategory) simply never appears. Ids may be any JSON integer (above 2^32 too) or a string
holding one, and numbers may come as strings (``"416"``), as some exporters write them.
``bbox`` ``[x, y, w, h]`` becomes absolute XYXY; ``iscrowd`` is kept; images without
annotations are kept as negatives. A ``file_name`` that leaves the images folder is never
followed: the convert stage refuses and reports it.
"""
from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.records import SPLITS, ImageRecord, ObjectAnnotation, hash_split

#: Folder names accepted for each split, in order of preference.
SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}


def read_coco(
    root: str | Path, annotation_file: str = "_annotations.coco.json",
    splits: Sequence[str] = SPLITS, *, images: str | Path | None = None,
    annotations: str | Path | None = None, val_fraction: float = 0.1, test_fraction: float = 0.1,
) -> list[ImageRecord]:
    """Records of every split: from split folders, per-split files, or one file split by ratios."""
    per_split = split_files(Path(annotations) if annotations else Path(root) / "annotations")
    if per_split and (annotations or not any(split_folder(Path(root), s) for s in splits)):
        base = Path(images) if images else Path(root)
        return [record for split, path in per_split.items() if split in splits
                for record in read_coco_file(path, _split_images(base, path), split)]
    single = Path(annotations) if annotations else _single_json(Path(root), splits)
    if single is not None:
        records = read_coco_file(single, _images_dir(single, images), None,
                                 (val_fraction, test_fraction))
        return [record for record in records if record.split in splits]
    root = Path(root).resolve()
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
        return Path(images).resolve()
    nested = json_path.parent / "images"
    return (nested if nested.is_dir() else json_path.parent).resolve()


def split_folder(root: Path, split: str) -> Path | None:
    """The first existing folder named for ``split`` (e.g. ``valid/`` for val), else None."""
    return next((root / n for n in SPLIT_FOLDERS[split] if (root / n).is_dir()), None)


def read_coco_file(
    json_path: Path, images: Path, split: str | None, fractions: tuple[float, float] = (0.1, 0.1),
) -> list[ImageRecord]:
    """One COCO JSON; image files are resolved in ``images``; ``split`` None = split by hash."""
    data = _load_json(json_path)
    names = {coco_id(c.get("id"), json_path): str(c["name"])
             for c in _list(data, "categories", json_path)}
    image_list = _list(data, "images", json_path)
    known_ids = {coco_id(image.get("id"), json_path) for image in image_list}
    objects: dict[Any, list[ObjectAnnotation]] = defaultdict(list)
    for ann in _list(data, "annotations", json_path):
        image_id = coco_id(ann.get("image_id"), json_path)
        category = coco_id(ann.get("category_id"), json_path)
        if image_id not in known_ids or category not in names:
            raise PipelineError(f"{json_path}: annotation {ann.get('id')} refers to an unknown "
                                f"image_id or category_id")
        objects[image_id].append(coco_object(ann, names[category], json_path))
    return [
        _record(image, objects[coco_id(image.get("id"), json_path)], images,
                split or hash_split(str(image["file_name"]), *fractions))
        for image in image_list
    ]


def coco_id(value: Any, json_path: Path) -> int | str:
    """An id as an int (any size; strings holding an integer too), else the string itself."""
    if isinstance(value, bool) or value is None:
        raise PipelineError(f"{json_path}: bad id {value!r}")
    if isinstance(value, int):
        return value
    text = str(value).strip()
    try:
        return int(text)
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            return text  # a non-numeric string id is still a valid key
        return int(number) if number.is_integer() else text


def coco_object(ann: dict, label: str, json_path: Path) -> ObjectAnnotation:
    """A COCO annotation (``bbox`` = x, y, width, height) as an absolute XYXY box."""
    try:
        x, y, w, h = (float(v) for v in ann["bbox"])
        crowd = bool(int(float(ann.get("iscrowd") or 0)))
    except (KeyError, TypeError, ValueError) as err:
        raise PipelineError(f"{json_path}: annotation {ann.get('id')} has a bad bbox or "
                            f"iscrowd: {err}") from err
    return ObjectAnnotation(label, x, y, x + w, y + h, is_crowd=crowd)


def _record(image: dict, objects: list, folder: Path, split: str) -> ImageRecord:
    file_name = str(image["file_name"])
    return ImageRecord(
        image_id=file_name,
        image_path=str(folder / file_name),  # not normalised: convert refuses what leaves folder
        width=_size(image.get("width")),  # 0 = unknown: taken from the image later
        height=_size(image.get("height")),
        split=split,
        objects=tuple(objects),
        root=str(folder),
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


def _list(data: dict, key: str, json_path: Path) -> list[dict]:
    value = data.get(key, [] if key == "annotations" else None)
    if not isinstance(value, list):
        raise PipelineError(f"{json_path}: '{key}' must be a list")
    return value
