"""The neutral annotation record that every dataset reader produces.

Box convention (explicit, as in detectron2's ``BoxMode.XYXY_ABS``): absolute, continuous pixel
coordinates with the origin at the image's top-left corner; ``xmin <= xmax`` and
``ymin <= ymax``; the box's width is ``xmax - xmin``. Normalised coordinates for the OD API are
these divided by the image width and height.
"""
from __future__ import annotations

from dataclasses import dataclass

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ObjectAnnotation:
    """One labelled box, in absolute pixel coordinates (see module docstring)."""

    label: str
    xmin: float
    ymin: float
    xmax: float
    ymax: float
    difficult: bool = False
    truncated: bool = False
    is_crowd: bool = False

    @property
    def area(self) -> float:
        return max(0.0, self.xmax - self.xmin) * max(0.0, self.ymax - self.ymin)


@dataclass(frozen=True)
class ImageRecord:
    """One image and its objects; ``image_path`` is absolute, ``image_id`` unique per dataset."""

    image_id: str
    image_path: str
    width: int
    height: int
    split: str
    objects: tuple[ObjectAnnotation, ...] = ()
