"""Read a COCO-format dataset into :class:`~pipeline.records.ImageRecord`s (detectron2 style).

Layout (as Roboflow and most exporters write it): one folder per split, ``train/``, ``val/``
(or ``valid/``), ``test/``, each holding its images and a COCO JSON (``data.coco_annotation_file``).
Category ids may have gaps or start at 0: only the *names* leave this module (ids are assigned
later by the label map), so a placeholder category without annotations (Roboflow's
supercategory) simply never appears. ``bbox`` ``[x, y, w, h]`` becomes absolute XYXY; images
without annotations are kept as negatives.
"""
from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.records import SPLITS, ImageRecord, ObjectAnnotation

#: Folder names accepted for each split, in order of preference.
SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}


def read_coco(
    root: str | Path, annotation_file: str = "_annotations.coco.json",
    splits: Sequence[str] = SPLITS,
) -> list[ImageRecord]:
    """Records of every split folder found under ``root`` (a missing split folder is empty)."""
    root = Path(root).resolve()
    folders = {split: split_folder(root, split) for split in splits}
    if not any(folders.values()):
        names = sorted({name for split in splits for name in SPLIT_FOLDERS[split]})
        raise PipelineError(f"{root} is not a COCO dataset root: none of {names} folders found")
    return [
        record
        for split, folder in folders.items()
        if folder is not None
        for record in read_coco_split(folder / annotation_file, split)
    ]


def split_folder(root: Path, split: str) -> Path | None:
    """The first existing folder named for ``split`` (e.g. ``valid/`` for val), else None."""
    return next((root / n for n in SPLIT_FOLDERS[split] if (root / n).is_dir()), None)


def read_coco_split(json_path: Path, split: str) -> list[ImageRecord]:
    """One COCO JSON; image files are resolved relative to the JSON's folder."""
    data = _load_json(json_path)
    names = {int(c["id"]): str(c["name"]) for c in _list(data, "categories", json_path)}
    images = _list(data, "images", json_path)
    known_ids = {image["id"] for image in images}
    objects: dict[Any, list[ObjectAnnotation]] = defaultdict(list)
    for ann in _list(data, "annotations", json_path):
        if ann.get("image_id") not in known_ids or int(ann.get("category_id", -1)) not in names:
            raise PipelineError(f"{json_path}: annotation {ann.get('id')} refers to an unknown "
                                f"image_id or category_id")
        objects[ann["image_id"]].append(coco_object(ann, names))
    return [_record(image, objects[image["id"]], json_path.parent, split) for image in images]


def coco_object(ann: dict, names: dict[int, str]) -> ObjectAnnotation:
    """A COCO annotation (``bbox`` = x, y, width, height) as an absolute XYXY box."""
    x, y, w, h = (float(v) for v in ann["bbox"])
    label = names[int(ann["category_id"])]
    return ObjectAnnotation(label, x, y, x + w, y + h, is_crowd=bool(ann.get("iscrowd", 0)))


def _record(image: dict, objects: list, folder: Path, split: str) -> ImageRecord:
    file_name = str(image["file_name"])
    return ImageRecord(
        image_id=file_name,
        image_path=str(folder / file_name),
        width=int(image.get("width") or 0),  # 0 = unknown: taken from the image later
        height=int(image.get("height") or 0),
        split=split,
        objects=tuple(objects),
    )


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
