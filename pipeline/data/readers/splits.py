"""Splits a dataset brings without val or test: taken from train by id hash.

The official COCO release has train and val only, VOC2012's split lists train and val, and
many YOLO ``data.yaml`` files name no test folder. The report stage evaluates on test (and
training on val), so a missing split would only fail after the whole training. As for datasets
without split lists, :func:`~pipeline.core.records.hash_split` of the image id with
``data.val_fraction`` / ``data.test_fraction`` decides which train images move: the same images
would have gone there without split lists, and adding images never moves the others.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace

from pipeline.core.records import ImageRecord, hash_split

#: The splits that may be derived from train.
DERIVABLE = ("val", "test")


def derive_missing_splits(
    records: Sequence[ImageRecord], val_fraction: float, test_fraction: float,
) -> tuple[list[ImageRecord], dict[str, int]]:
    """``records`` with the missing val / test split taken from train by id hash, and the
    number of images moved to each derived split (``{}`` when nothing was derived).

    A split is missing when no record is in it. On a dataset split by hash already this moves
    nothing: its train images are exactly those the hash leaves in train.
    """
    fractions = missing_fractions({record.split for record in records}, val_fraction,
                                  test_fraction)
    if fractions is None:
        return list(records), {}
    moved = [move_to_derived(r, fractions) for r in records]
    derived = Counter(r.split for r in moved if r.split in DERIVABLE and fractions[r.split])
    return moved, dict(sorted(derived.items()))


def missing_fractions(present: Collection[str], val_fraction: float,
                      test_fraction: float) -> dict[str, float] | None:
    """The fraction of train each missing split takes (0 for a split that is ``present``), or
    None when nothing is derived (no train, or no missing split with a fraction)."""
    fractions = {split: fraction if split not in present else 0.0
                 for split, fraction in zip(DERIVABLE, (val_fraction, test_fraction))}
    if "train" not in present or not any(fractions.values()):
        return None
    return fractions


def move_to_derived(record: ImageRecord, fractions: Mapping[str, float]) -> ImageRecord:
    """A train record in the split its id hash gives with ``fractions``; others unchanged."""
    if record.split != "train":
        return record
    return replace(record, split=hash_split(record.image_id, fractions["val"], fractions["test"]))


def derived_note(split: str, images: int, fraction: float) -> str:
    """The data report's line for a derived split."""
    return (f"split '{split}' derived from train: the dataset has no {split} split, so "
            f"{images} train images moved to it by id hash (data.{split}_fraction: {fraction})")
