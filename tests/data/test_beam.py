"""pipeline.data.beam: the Beam graph on Beam's TestPipeline, duplicates, split summaries, the
Dask safety check."""
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
    WORK_DIR, ShardResult, SplitSummaryFn, build_pipeline, dask_problems, duplicate_issues,
    merge_shard_results, read_results,
)
from pipeline.data.conversion import beam_counters, make_runner
from pipeline.data.health import box_size_bin, image_stats

from tests.data.helpers import decode_records, save


def test_summary_histograms() -> None:
    fn = SplitSummaryFn()
    acc = fn.add_input(fn.create_accumulator(), (["a", "b", "a"], [4.0, 40.0, 600.0]))
    acc = fn.merge_accumulators([acc, fn.add_input(fn.create_accumulator(), ([], []))])
    assert acc == {"images": 2, "objects": 3, "max_objects_per_image": 3,
                   "objects_per_class": {"a": 2, "b": 1}, "objects_per_image": {"3": 1, "0": 1},
                   "box_sizes": {"0-8": 1, "32-64": 1, ">=512": 1},
                   "box_shapes": {}, "box_shapes_longer_side": {}}
    assert [box_size_bin(s) for s in (0, 8, 95.9, 96)] == ["0-8", "8-16", "64-96", "96-128"]


def test_summary_counts_box_shapes_per_class_and_merges_them() -> None:
    """Each box's width and height as fractions of the image (and of its longer side), by
    class, in 1/8-octave bins; shards' summaries add up."""
    fn = SplitSummaryFn()
    wide = ImageRecord("a", "a.jpg", 640, 480, "train", (ObjectAnnotation("cat", 0, 0, 64, 48),))
    shards = [fn.add_input(fn.create_accumulator(), image_stats(wide)) for _ in range(2)]
    merged = fn.merge_accumulators(shards)
    # 64/640 = 48/480 = 0.1 -> floor(8 log2 0.1) = -27; 48/640 = 0.075 -> -30
    assert merged["box_shapes"] == {"cat": {"-27,-27": 2}}
    assert merged["box_shapes_longer_side"] == {"cat": {"-27,-30": 2}}
    assert merged["box_sizes"] == {"32-64": 2}


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
        results = build_pipeline(p, records, out, {"cat": 1}, {"train": 2, "val": 1, "test": 1})
        assert_that(results | beam.Map(_comparable), equal_to([(
            (("same.jpg", "test", "leakage", "suspicious"),  # sorted by split, file, reason
             ("a.jpg", "train", "box_clipped", "fixed"),
             ("corrupt.jpg", "train", "corrupt_image", "skipped"),
             ("same.jpg", "train", "leakage", "suspicious"),
             ("g.png", "val", "converted_to_rgb", "fixed"),
             ("g.png", "val", "reencoded_as_jpeg", "fixed")),
            # dealt round-robin: a, s1 | c (corrupt)
            (("test", "test.tfrecord-00000-of-00001", 1),
             ("train", "train.tfrecord-00000-of-00002", 2),
             ("train", "train.tfrecord-00001-of-00002", 0),
             ("val", "val.tfrecord-00000-of-00001", 1)),
            (("train", 2, {"cat": 1}, {"0": 1, "1": 1}, 1),
             ("val", 1, {}, {"0": 1}, 0),
             ("test", 1, {}, {"0": 1}, 0)))]))
    names = sorted(f.name for f in out.glob("*.tfrecord-*"))
    assert names == ["test.tfrecord-00000-of-00001", "train.tfrecord-00000-of-00002",
                     "train.tfrecord-00001-of-00002", "val.tfrecord-00000-of-00001"]
    decoded = decode_records(sorted(out.glob("*.tfrecord-*")))
    np.testing.assert_allclose(decoded["a"]["boxes"], [[10 / 30, 0.25, 20 / 30, 1.0]], atol=1e-6)
    assert decoded["g"]["shape"] == (30, 40, 3)
    assert sorted(decoded) == ["a", "g", "s1", "s2"]
    progress = [r.getMessage() for r in caplog.records if r.name == "pipeline.data.beam"]
    assert "convert: train.tfrecord-00000-of-00002: 2/2 images" in progress  # progress is logged
    issues, summaries, counters = read_results(str(out / WORK_DIR))  # the file the driver reads
    assert len(issues) == 6 and summaries["train"]["images"] == 2
    assert counters == {"box_clipped": 1, "converted_to_rgb": 1, "corrupt_image": 1,
                        "images_written": 4, "leakage": 2, "reencoded_as_jpeg": 1,
                        "shards_written": 4}


def _comparable(results: dict) -> tuple:
    """The results dict as nested tuples (equal_to compares elements with ==, in any order)."""
    issues = tuple((i["file"], i["split"], i["reason"], i["action"]) for i in results["issues"])
    summaries = tuple((split, s["images"], s["objects_per_class"], s["objects_per_image"],
                       sum(s["box_sizes"].values())) for split, s in results["summaries"].items())
    return issues, tuple(map(tuple, results["shards"])), summaries


def test_duplicates_within_a_split_name_all_but_the_first() -> None:
    got = list(duplicate_issues([("train", "b.jpg"), ("train", "a.jpg"), ("train", "c.jpg")]))
    assert [(i["file"], i["reason"], i["action"]) for i in got] == [
        ("b.jpg", "duplicate_image", "suspicious"), ("c.jpg", "duplicate_image", "suspicious")]
    assert got[0]["detail"] == "same content as a.jpg (train), c.jpg (train)"
    assert list(duplicate_issues([("val", "x.jpg")])) == []


def test_merged_counters_equal_the_runners_metrics(tmp_path: Path) -> None:
    """The counters the results carry (for runners without metrics, e.g. Dask) are the ones
    the DirectRunner's metrics count: leakage across splits, duplicates within one, skips."""
    content = Path(save(tmp_path / "a.jpg")).read_bytes()
    records = []
    for name, split in (("a", "train"), ("b", "test"), ("c", "val"), ("d", "val")):
        (tmp_path / f"{name}.jpg").write_bytes(content)  # the same content 4 times
        records.append(ImageRecord(name, str(tmp_path / f"{name}.jpg"), 40, 30, split))
    records.append(ImageRecord("m", str(tmp_path / "missing.jpg"), 40, 30, "train"))
    options = PipelineOptions()
    p = beam.Pipeline(runner=make_runner(options), options=options)
    build_pipeline(p, records, tmp_path / "out", {"cat": 1}, {"train": 2, "val": 1, "test": 1})
    result = p.run()
    result.wait_until_finish()
    counted = read_results(str(tmp_path / "out" / WORK_DIR))[2]
    assert counted["leakage"] == 4 and counted["missing_image"] == 1
    assert beam_counters(result) == counted


def test_merge_shard_results_finds_duplicates_across_shards() -> None:
    summary = SplitSummaryFn().create_accumulator()
    shards = [ShardResult("train", "t0", 2, [], summary, [("h1", "a.jpg"), ("h3", "d.jpg")]),
              ShardResult("test", "s0", 1, [], summary, [("h1", "b.jpg")]),
              ShardResult("train", "t1", 1, [], summary, [("h3", "e.jpg")])]
    merged = merge_shard_results(shards)
    assert [(i["file"], i["split"], i["reason"]) for i in merged["issues"]] == [
        ("b.jpg", "test", "leakage"), ("a.jpg", "train", "leakage"),
        ("e.jpg", "train", "duplicate_image")]
    assert merged["counters"] == {"duplicate_image": 1, "images_written": 4, "leakage": 2,
                                  "shards_written": 3}


def test_build_pipeline_labels_its_steps_and_is_safe_on_dask(tmp_path: Path) -> None:
    """The step names docs/scale-out.md lists (they name the steps in a runner's UI), and no
    step that Beam's DaskRunner would run differently (one sink, no tagged output...)."""
    p = beam.Pipeline(runner=make_runner(PipelineOptions()))
    record = ImageRecord("a", save(tmp_path / "a.jpg"), 40, 30, "train")
    build_pipeline(p, [record], tmp_path / "out", {"cat": 1}, {"train": 1, "val": 1, "test": 1})
    names = {t.unique_name for t in p.to_runner_api().components.transforms.values()}
    assert {"CreateShards", "Distribute", "WriteShards", "GatherShards", "WriteResults"} <= names
    assert dask_problems(p) == []


def test_dask_problems_name_what_dask_would_run_differently() -> None:
    """The previous graph's shapes: a ParDo with tagged outputs, two sinks, a Flatten."""
    p = beam.Pipeline(runner=make_runner(PipelineOptions()))
    split = p | beam.Create([1, 2]) | "Split" >> beam.ParDo(
        lambda e: [beam.pvalue.TaggedOutput("odd", e)] if e % 2 else [e]).with_outputs("odd",
                                                                                    main="even")
    _ = split.even | "SinkA" >> beam.Map(print)
    _ = (split.odd, split.even) | "Both" >> beam.Flatten() | "SinkB" >> beam.Map(print)
    problems = dask_problems(p)
    assert problems == ["Split/ParDo(CallableWrapperDoFn): tagged outputs", "Both: a Flatten",
                        "2 sinks (SinkA, SinkB): only the last runs"]
