"""pipeline.data.readers.splits: a missing val or test split is taken from train by id hash."""
from __future__ import annotations

from pipeline.core.records import ImageRecord, hash_split
from pipeline.data.readers.splits import derive_missing_splits


def records(split_of: dict[str, str]) -> list[ImageRecord]:
    return [ImageRecord(i, f"{i}.jpg", 1, 1, split) for i, split in split_of.items()]


def test_a_missing_test_split_is_taken_from_train_by_hash() -> None:
    """COCO's official layout: train and val only. Val is kept, test takes the train images
    whose hash puts them in test (as without split lists); the others stay in train."""
    given = {f"t{i}.jpg": "train" for i in range(200)} | {"v0.jpg": "val", "v1.jpg": "val"}
    moved, derived = derive_missing_splits(records(given), 0.1, 0.2)
    expected = {i: ("test" if s == "train" and hash_split(i, 0.0, 0.2) == "test" else s)
                for i, s in given.items()}
    assert {r.image_id: r.split for r in moved} == expected
    assert derived == {"test": sum(s == "test" for s in expected.values())}
    assert 20 < derived["test"] < 60


def test_only_train_gives_val_and_test_as_without_split_lists() -> None:
    given = {f"t{i}.jpg": "train" for i in range(100)}
    moved, derived = derive_missing_splits(records(given), 0.1, 0.2)
    assert {r.image_id: r.split for r in moved} == {i: hash_split(i, 0.1, 0.2) for i in given}
    assert set(derived) == {"val", "test"}


def test_nothing_moves_when_every_split_is_there_or_split_by_hash_or_fraction_zero() -> None:
    complete = records({"a": "train", "b": "val", "c": "test"})
    assert derive_missing_splits(complete, 0.1, 0.1) == (complete, {})
    by_hash = records({f"t{i}": hash_split(f"t{i}", 0.1, 0.1) for i in range(50)})
    by_hash = [r for r in by_hash if r.split != "test"]  # a small set whose test came out empty
    assert derive_missing_splits(by_hash, 0.1, 0.1) == (by_hash, {})
    no_test = records({"a": "train", "b": "val"})
    assert derive_missing_splits(no_test, 0.1, 0.0) == (no_test, {})
