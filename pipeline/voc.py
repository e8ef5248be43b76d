"""Read a Pascal VOC dataset into :class:`~pipeline.records.ImageRecord`s (detectron2 style).

Layout: ``JPEGImages/``, ``Annotations/<id>.xml``, ``ImageSets/Main/{train,val,test}.txt``.
Image files are resolved inside the dataset only (``JPEGImages/<filename>``, else
``JPEGImages/<id>.<ext>``): the XML's ``<folder>`` and ``<path>`` are ignored because annotation
tools fill them with paths from the author's machine. Box coordinates are taken as they are,
as the OD API's own ``create_pascal_tf_record.py`` does (no 1-based shift), so a box drawn from
pixel 10 to 20 keeps width 10. Only metadata is read here; images are opened in the Beam stage.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from pipeline.errors import PipelineError
from pipeline.records import SPLITS, ImageRecord, ObjectAnnotation

#: Extensions tried, in order, when ``<filename>`` does not name an existing file.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".JPG", ".JPEG", ".png", ".PNG", ".bmp", ".gif", ".tif")


def read_voc(root: str | Path, splits: Sequence[str] = SPLITS) -> list[ImageRecord]:
    """All images listed in ``ImageSets/Main/<split>.txt`` for each split, in list order."""
    root = Path(root).resolve()
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        if not (root / sub).is_dir():
            raise PipelineError(f"{root} is not a Pascal VOC dataset: {sub}/ is missing")
    return [
        read_annotation(root, image_id, split)
        for split in splits
        for image_id in split_ids(root, split)
    ]


def split_ids(root: Path, split: str) -> list[str]:
    """Image ids listed in ``ImageSets/Main/<split>.txt`` ([] when the file does not exist)."""
    path = root / "ImageSets" / "Main" / f"{split}.txt"
    if not path.is_file():
        return []
    # The first token only: per-class lists (``<class>_train.txt``) append a +1/-1 flag.
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def read_annotation(root: Path, image_id: str, split: str) -> ImageRecord:
    """Parse ``Annotations/<image_id>.xml`` (safely, with defusedxml) into a record."""
    xml_path = root / "Annotations" / f"{image_id}.xml"
    annotation = _parse_xml(xml_path)
    width, height = _size(annotation)
    objects = tuple(_parse_object(node, xml_path) for node in annotation.findall("object"))
    image_path = resolve_image(root, image_id, annotation.findtext("filename"))
    return ImageRecord(image_id, str(image_path), width, height, split, objects)


def resolve_image(root: Path, image_id: str, filename: str | None) -> Path:
    """``JPEGImages/<filename>`` if it exists, else ``JPEGImages/<image_id>.<ext>``.

    When nothing exists the first candidate is returned; the Beam stage reports it as missing.
    """
    images = root / "JPEGImages"
    # Path(...).name keeps a hostile or absolute <filename> inside JPEGImages/.
    candidates = [images / Path(filename.strip()).name] if filename and filename.strip() else []
    candidates += [images / f"{image_id}{ext}" for ext in IMAGE_EXTENSIONS]
    return next((path for path in candidates if path.is_file()), candidates[0])


def _parse_xml(xml_path: Path) -> Element:
    if not xml_path.is_file():
        raise PipelineError(f"annotation {xml_path} is listed in ImageSets/Main but missing")
    try:
        return SafeET.parse(xml_path).getroot()
    except (ParseError, DefusedXmlException) as err:
        raise PipelineError(f"cannot parse annotation {xml_path}: {err}") from err


def _size(annotation: Element) -> tuple[int, int]:
    # 0 means "unknown": the Beam stage then takes the size from the image itself.
    return _int(annotation.findtext("size/width")), _int(annotation.findtext("size/height"))


def _parse_object(node: Element, xml_path: Path) -> ObjectAnnotation:
    label = (node.findtext("name") or "").strip()
    box = node.find("bndbox")
    if not label or box is None:
        raise PipelineError(f"{xml_path}: an <object> has no <name> or no <bndbox>")
    try:
        coords = [float(box.findtext(tag) or "") for tag in ("xmin", "ymin", "xmax", "ymax")]
    except ValueError as err:
        raise PipelineError(f"{xml_path}: bad <bndbox> for {label!r}: {err}") from err
    flags = (_int(node.findtext("difficult")) > 0, _int(node.findtext("truncated")) > 0)
    return ObjectAnnotation(label, *coords, difficult=flags[0], truncated=flags[1])


def _int(text: str | None) -> int:
    try:
        return int(float(text)) if text and text.strip() else 0
    except ValueError:
        return 0
