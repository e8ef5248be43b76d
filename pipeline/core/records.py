"""The neutral annotation record that every dataset reader produces.

Box convention (explicit, as in detectron2's ``BoxMode.XYXY_ABS``): absolute, continuous pixel
coordinates with the origin at the image's top-left corner; ``xmin <= xmax`` and
``ymin <= ymax``; the box's width is ``xmax - xmin``. Normalised coordinates for the OD API are
these divided by the image width and height.
"""
from __future__ import annotations

import functools
import hashlib
import os
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
    """One image and its objects; ``image_id`` is unique per dataset.

    ``image_path`` is the image file as the annotation names it, joined to its folder but not
    normalised; ``root`` is the folder it must stay inside (``""``: no check). The convert stage
    refuses paths that leave ``root`` (``..``, absolute paths) instead of following them.
    ``width`` and ``height`` are the declared size (0 = not declared). ``problem`` is set by a
    reader that could not use the annotation (``"reason: detail"``): the image is then skipped
    and reported with that reason (a ``suspicious`` reason, e.g. a YOLO image without a label
    file, is reported and the image kept). ``annotation`` is the file that names the image
    (VOC XML, COCO JSON, YOLO txt), for the report.
    """

    image_id: str
    image_path: str
    width: int
    height: int
    split: str
    objects: tuple[ObjectAnnotation, ...] = ()
    root: str = ""
    problem: str = ""
    annotation: str = ""


def is_inside(path: str, root: str) -> bool:
    """Whether ``path`` stays inside ``root`` once ``..`` are resolved (symlinks: see
    :func:`link_leaving`)."""
    if not root:
        return True
    root = os.path.normpath(os.path.abspath(root))
    return os.path.normpath(os.path.abspath(path)).startswith(root + os.sep)


def link_leaving(path: str, root: str) -> str | None:
    """Where ``path`` really is when a symbolic link (the file or a folder on the way) takes it
    out of ``root``, else None. Links into a DVC cache (a ``.dvc/cache`` folder: DVC's
    ``symlink`` checkout) are allowed; remote paths (``gs://``...) have no links."""
    if not root or "://" in path:
        return None
    real = os.path.realpath(path)
    if is_inside(real, _real_root(root)) or _in_dvc_cache(real):
        return None
    return real


@functools.lru_cache(maxsize=64)
def _real_root(root: str) -> str:
    # Once per dataset root and process, not per image (a stat per folder on the way).
    return os.path.realpath(root)


def _in_dvc_cache(real_path: str) -> bool:
    parts = real_path.split(os.sep)
    return any(parts[i:i + 2] == [".dvc", "cache"] for i in range(len(parts) - 1))



def hash_split(image_id: str, val_fraction: float, test_fraction: float) -> str:
    """The split of ``image_id`` when the dataset has no split lists.

    A hash of the id alone decides, so the same image always lands in the same split and adding
    images never moves the others (unlike shuffling with a seed).
    """
    digest = hashlib.sha256(image_id.encode("utf-8")).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
    if position < test_fraction:
        return "test"
    return "val" if position < test_fraction + val_fraction else "train"
