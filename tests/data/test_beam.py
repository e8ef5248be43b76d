"""pipeline.data.beam: the Beam graph on Beam's TestPipeline, duplicates, split summaries."""
from __future__ import annotations

import logging
from pathlib import Path

import apache_beam as beam
import numpy as np
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.core.records import ImageRecord, ObjectAnnotation
from pipeline.data.beam import (
    FindDuplicateContent, SplitSummaryFn, build_pipeline, duplicate_issues,
)
from pipeline.data.conversion import beam_counters, make_runner
from pipeline.data.health import box_size_bin

from tests.data.helpers import decode_records, save


def test_summary_histograms() -> None:
    fn = SplitSummaryFn()
    acc = fn.add_input(fn.create_accumulator(), (["a", "b", "a"], [4.0, 40.0, 600.0]))
    acc = fn.merge_accumulators([acc, fn.add_input(fn.create_accumulator(), ([], []))])
    assert acc == {"images": 2, "objects": 3, "max_objects_per_image": 3,
                   "objects_per_class": {"a": 2, "b": 1}, "objects_per_image": {"3": 1, "0": 1},
                   "box_sizes": {"0-8": 1, "32-64": 1, ">=512": 1}}
    assert [box_size_bin(s) for s in (0, 8, 95.9, 96)] == ["0-8", "8-16", "64-96", "96-128"]


def test_build_pipeline_on_test_pipeline(tmp_path: Path, caplog) -> None:
    box = ObjectAnnotation("cat", 10, 10, 50, 20)  # sticks out of the 40 px wide image
    (tmp_path / "corrupt.jpg").write_bytes(b"garbage")
    same = save(tmp_path / "same.jpg", size=(32, 32))
    records = [
        ImageRecord("a", save(tmp_path / "a.jpg"), 40, 30, "train", (box,)),
        ImageRecord("g", save(tmp_path / "g.png", "L", fmt="PNG"), 40, 30, "val"),
        ImageRecord("c", str(tmp_path / "corrupt.jpg"), 40, 30, "train"),
        ImageRecord("s1", same, 32, 32, "train"),
        ImageRecord("s2", same, 32, 32, "test"),  # the same content in train and test
    ]
    out = tmp_path / "out"
    caplog.set_level(logging.INFO, logger="pipeline.data.beam")
    with test_pipeline.TestPipeline(runner=make_runner(PipelineOptions())) as p:
        result = build_pipeline(p, records, out, {"cat": 1}, {"train": 2, "val": 1, "test": 1})
        issues = result.issues | beam.Map(lambda i: (i["file"], i["split"], i["reason"],
                                                     i["action"]))
        assert_that(issues, equal_to([
            ("a.jpg", "train", "box_clipped", "fixed"),
            ("g.png", "val", "converted_to_rgb", "fixed"),
            ("g.png", "val", "reencoded_as_jpeg", "fixed"),
            ("corrupt.jpg", "train", "corrupt_image", "skipped"),
            ("same.jpg", "train", "leakage", "suspicious"),
            ("same.jpg", "test", "leakage", "suspicious")]), label="CheckIssues")
        assert_that(result.shards, equal_to([  # dealt round-robin: a, s1 | c (corrupt)
            ("train", "train.tfrecord-00000-of-00002", 2),
            ("train", "train.tfrecord-00001-of-00002", 0),
            ("val", "val.tfrecord-00000-of-00001", 1),
            ("test", "test.tfrecord-00000-of-00001", 1)]), label="CheckShards")
        summaries = result.summaries | beam.Map(
            lambda kv: (kv[0], kv[1]["images"], kv[1]["objects_per_class"],
                        kv[1]["objects_per_image"], sum(kv[1]["box_sizes"].values())))
        assert_that(summaries, equal_to([
            ("train", 2, {"cat": 1}, {"0": 1, "1": 1}, 1),
            ("val", 1, {}, {"0": 1}, 0),
            ("test", 1, {}, {"0": 1}, 0)]), label="CheckSummaries")
    names = sorted(f.name for f in out.glob("*.tfrecord-*"))
    assert names == ["test.tfrecord-00000-of-00001", "train.tfrecord-00000-of-00002",
                     "train.tfrecord-00001-of-00002", "val.tfrecord-00000-of-00001"]
    decoded = decode_records(sorted(out.glob("*.tfrecord-*")))
    np.testing.assert_allclose(decoded["a"]["boxes"], [[10 / 30, 0.25, 20 / 30, 1.0]], atol=1e-6)
    assert decoded["g"]["shape"] == (30, 40, 3)
    assert sorted(decoded) == ["a", "g", "s1", "s2"]
    progress = [r.getMessage() for r in caplog.records if r.name == "pipeline.data.beam"]
    assert "convert: train.tfrecord-00000-of-00002: 2/2 images" in progress  # progress is logged


def test_duplicates_within_a_split_name_all_but_the_first() -> None:
    got = list(duplicate_issues([("train", "b.jpg"), ("train", "a.jpg"), ("train", "c.jpg")]))
    assert [(i["file"], i["reason"], i["action"]) for i in got] == [
        ("b.jpg", "duplicate_image", "suspicious"), ("c.jpg", "duplicate_image", "suspicious")]
    assert got[0]["detail"] == "same content as a.jpg (train), c.jpg (train)"
    assert list(duplicate_issues([("val", "x.jpg")])) == []


def test_find_duplicate_content_on_test_pipeline_and_its_counters() -> None:
    """The composite transform alone: leakage across splits, duplicates within one; the
    ``convert`` counters count them as the runner saw them."""
    p = test_pipeline.TestPipeline(runner=make_runner(PipelineOptions()))
    content = p | beam.Create([
        ("h1", ("train", "a.jpg")), ("h1", ("test", "b.jpg")), ("h2", ("val", "c.jpg")),
        ("h3", ("val", "d.jpg")), ("h3", ("val", "e.jpg"))])
    issues = (content | "Duplicates" >> FindDuplicateContent()
              | beam.Map(lambda i: (i["file"], i["split"], i["reason"])))
    assert_that(issues, equal_to([("a.jpg", "train", "leakage"), ("b.jpg", "test", "leakage"),
                                  ("e.jpg", "val", "duplicate_image")]))
    result = p.run()
    result.wait_until_finish()
    assert beam_counters(result) == {"duplicate_image": 1, "leakage": 2}


def test_build_pipeline_labels_its_steps(tmp_path: Path) -> None:
    """The step names docs/scale-out.md lists (they name the steps in a runner's UI)."""
    p = beam.Pipeline(runner=make_runner(PipelineOptions()))
    record = ImageRecord("a", save(tmp_path / "a.jpg"), 40, 30, "train")
    build_pipeline(p, [record], tmp_path / "out", {"cat": 1}, {"train": 1, "val": 1, "test": 1})
    names = {t.unique_name for t in p.to_runner_api().components.transforms.values()}
    assert {"CreateShards", "Distribute", "WriteShards", "SummariseSplits",
            "FindDuplicateContent", "WriteIssues", "WriteSummaries"} <= names
