"""The Beam graph of the convert stage: shard tasks -> TFRecord shards, issues and summaries.

:func:`build_pipeline` adds the conversion to any pipeline (a real runner, or Beam's
``TestPipeline`` in tests). The driver deals the records into shards (:func:`shard_tasks`);
``WriteShards`` writes each shard on a worker, one image at a time (only one image is in a
worker's memory, so memory does not grow with the dataset), through the per-image checks of
:mod:`pipeline.data.checks`. Every fix or skip increments a counter in the ``convert`` metrics
namespace and becomes an issue; identical content in two splits is reported as leakage. The
issues and per-split summaries are written as JSON Lines to ``WORK_DIR`` for the driver
(:func:`read_side_outputs`).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import pickle
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any, NamedTuple

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.tfrecordio import _TFRecordUtil
from apache_beam.metrics import Metrics

from pipeline.core import layout
from pipeline.core.records import ImageRecord
from pipeline.data.checks import Issue, file_name, prepare_image, stored_jpeg_sha256
from pipeline.data.health import box_size_bin, empty_summary
from pipeline.data.labelmap import LabelMap
from pipeline.data.tfexample import build_example

log = logging.getLogger(__name__)

#: Beam's side outputs (issues, per-split summaries) go here, inside the partial output.
WORK_DIR = "_beam"
#: The side outputs' files in WORK_DIR (``.jsonl`` added).
ISSUES_FILE = "issues"
SUMMARIES_FILE = "summaries"
#: A worker logs its progress every this many images of a shard.
PROGRESS_EVERY = 250
METRICS_NAMESPACE = "convert"
ISSUES_TAG = "issues"
STATS_TAG = "stats"
CONTENT_TAG = "content"


class ShardTask(NamedTuple):
    """One shard to write, ``{split}.tfrecord-{index}-of-{count}``; its records are in the file
    ``records`` (pickled one by one by the driver: Beam's Create would compress them, seconds
    per 10,000, and would hold them all)."""

    split: str
    index: int
    count: int
    records: str


class ConvertOutputs(NamedTuple):
    """The PCollections :func:`build_pipeline` produces (for tests and further steps)."""

    shards: beam.PCollection  # (split, shard file name, images written)
    issues: beam.PCollection  # Issue as a dict
    summaries: beam.PCollection  # (split, summary dict, see SplitSummaryFn)


def shard_tasks(
    records: Iterable[ImageRecord], shards: Mapping[str, int], folder: str
) -> list[ShardTask]:
    """Records dealt round-robin into their split's shards (every shard exists, maybe empty),
    in one pass: each record is appended to its shard's file in ``folder`` as it comes, so the
    driver never holds more than one (its memory does not grow with the dataset)."""
    tasks = {(split, index): ShardTask(split, index, count,
                                       FileSystems.join(folder, f"{split}-{index:05d}.pickle"))
             for split, count in shards.items() for index in range(count)}
    dealt = Counter[str]()
    with contextlib.ExitStack() as stack:
        files = {key: stack.enter_context(FileSystems.create(
            task.records, compression_type=CompressionTypes.UNCOMPRESSED))
            for key, task in tasks.items()}
        for record in records:
            index = dealt[record.split] % shards[record.split]
            dealt[record.split] += 1
            pickle.dump(record, files[record.split, index], pickle.HIGHEST_PROTOCOL)
    return list(tasks.values())


def load_shard_records(path: str) -> tuple[ImageRecord, ...]:
    """The records :func:`shard_tasks` wrote (our own file, never user input)."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        return tuple(read_pickled(handle))


def read_pickled(handle: IO[bytes]) -> Iterator[Any]:
    """The objects pickled one after the other into ``handle`` (our own files only)."""
    while True:
        try:
            yield pickle.load(handle)
        except EOFError:
            return


def build_pipeline(
    p: beam.Pipeline, records: Iterable[ImageRecord], output_dir: Path,
    label_map: LabelMap, num_shards_by_split: Mapping[str, int], size_mismatch: str = "skip",
) -> ConvertOutputs:
    """Add the conversion to ``p``: shards in ``output_dir``, issues and summaries in WORK_DIR."""
    output_dir, work = Path(output_dir), Path(output_dir) / WORK_DIR
    written = (
        p
        | "CreateShards" >> beam.Create(
            shard_tasks(records, num_shards_by_split, str(work / "tasks")))
        # Create emits one bundle; a reshuffle lets the runner spread shards over its workers.
        | "Distribute" >> beam.Reshuffle()
        | "WriteShards" >> beam.ParDo(
            WriteShardFn(output_dir, label_map, size_mismatch)).with_outputs(
            ISSUES_TAG, STATS_TAG, CONTENT_TAG, main="shards")
    )
    summaries = written[STATS_TAG] | "SummariseSplits" >> beam.CombinePerKey(SplitSummaryFn())
    duplicates = written[CONTENT_TAG] | "FindDuplicateContent" >> FindDuplicateContent()
    issues = (written[ISSUES_TAG], duplicates) | "AllIssues" >> beam.Flatten()
    _ = issues | "WriteIssues" >> WriteJsonLines(work / ISSUES_FILE, dict)
    _ = summaries | "WriteSummaries" >> WriteJsonLines(work / SUMMARIES_FILE, list)
    return ConvertOutputs(written.shards, issues, summaries)


class WriteShardFn(beam.DoFn):
    """ShardTask -> its TFRecord file, written one image at a time (memory stays flat).

    Main output: (split, file name, images written). Tagged outputs: issues (``Issue`` as a
    dict: Beam encodes dicts natively but pickles dataclasses, ~0.5 ms each), stats
    ((split, (labels, box sizes)) per image written) and content ((sha256, (split, file))).
    """

    def __init__(self, output_dir: Path, label_map: LabelMap, size_mismatch: str = "skip"):
        super().__init__()
        self.output_dir = str(output_dir)
        self.label_map = dict(label_map)
        self.size_mismatch = size_mismatch

    def process(self, task: ShardTask) -> Iterator[Any]:
        name = layout.shard_name(task.split, task.index, task.count)
        path = FileSystems.join(self.output_dir, name)
        records, written = load_shard_records(task.records), 0
        with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as out:
            for position, record in enumerate(records, start=1):
                outputs, wrote = self._convert(record, out)
                written += wrote
                yield from outputs
                if position % PROGRESS_EVERY == 0 or position == len(records):
                    log.info("convert: %s: %d/%d images", name, position, len(records))
        Metrics.counter(METRICS_NAMESPACE, "shards_written").inc()
        yield task.split, name, written

    def _convert(self, record: ImageRecord, out: Any) -> tuple[list[Any], bool]:
        """Write one image's example to ``out``: (its tagged outputs, whether it was written)."""
        issues: list[Issue] = []
        prepared = prepare_image(record, self.label_map, issues, self.size_mismatch)
        outputs: list[Any] = []
        for issue in issues:
            Metrics.counter(METRICS_NAMESPACE, issue.reason).inc()
            outputs.append(beam.pvalue.TaggedOutput(ISSUES_TAG, asdict(issue)))
        if prepared is None:
            return outputs, False
        clean = prepared.record
        example = build_example(clean, prepared.jpeg, self.label_map,
                                stored_jpeg_sha256(prepared, issues))
        _TFRecordUtil.write_record(out, example.SerializeToString())  # Beam's TFRecord framing
        Metrics.counter(METRICS_NAMESPACE, "images_written").inc()
        stats = ([o.label for o in clean.objects], [math.sqrt(o.area) for o in clean.objects])
        content = (prepared.content_sha256, (clean.split, file_name(record)))
        outputs += [beam.pvalue.TaggedOutput(STATS_TAG, (clean.split, stats)),
                    beam.pvalue.TaggedOutput(CONTENT_TAG, content)]
        return outputs, True


class FindDuplicateContent(beam.PTransform):
    """(content sha256, (split, file)) -> Issues: ``leakage`` when the same content is in two
    splits, ``duplicate_image`` when it is twice in one split."""

    def expand(self, content: beam.PCollection) -> beam.PCollection:
        return (
            content
            | "GroupByContent" >> beam.GroupByKey()
            | "DuplicateIssues" >> beam.FlatMap(lambda kv: duplicate_issues(kv[1]))
        )


def duplicate_issues(entries: Iterable[tuple[str, str]]) -> Iterator[dict]:
    """Issues for one content hash: every file when it spans splits, else all but the first."""
    entries = sorted(set(entries))
    if len(entries) < 2:
        return
    leak = len({split for split, _ in entries}) > 1
    for position, (split, file) in enumerate(entries):
        if not leak and position == 0:
            continue  # within one split: the first copy is not a problem
        others = [f"{f} ({s})" for s, f in entries if (s, f) != (split, file)]
        more = f" and {len(others) - 3} more" if len(others) > 3 else ""
        reason = "leakage" if leak else "duplicate_image"
        Metrics.counter(METRICS_NAMESPACE, reason).inc()
        yield asdict(Issue(file, split, reason, "suspicious",
                           "same content as " + ", ".join(others[:3]) + more))


class WriteJsonLines(beam.PTransform):
    """Elements -> one ``<prefix>.jsonl`` file, each element as ``to_json(element)``."""

    def __init__(self, prefix: Path, to_json: Any):
        super().__init__()
        self.prefix, self.to_json = str(prefix), to_json

    def expand(self, elements: beam.PCollection) -> beam.PCollection:
        return (
            elements
            | "ToJson" >> beam.Map(lambda e, f=self.to_json: json.dumps(f(e), sort_keys=True))
            | "Write" >> beam.io.WriteToText(
                self.prefix, file_name_suffix=".jsonl", shard_name_template="")
        )


class SplitSummaryFn(beam.CombineFn):
    """Per split: images, objects (per class), objects per image and box sizes (histograms)."""

    def create_accumulator(self) -> dict:
        return empty_summary()

    def add_input(self, acc: dict, stats: tuple[list[str], list[float]]) -> dict:
        labels, sizes = stats
        acc["images"] += 1
        acc["objects"] += len(labels)
        acc["max_objects_per_image"] = max(acc["max_objects_per_image"], len(labels))
        _count(acc["objects_per_class"], labels)
        _count(acc["objects_per_image"], [str(len(labels))])
        _count(acc["box_sizes"], [box_size_bin(size) for size in sizes])
        return acc

    def merge_accumulators(self, accumulators: Iterable[dict]) -> dict:
        merged = self.create_accumulator()
        for acc in accumulators:
            merged["images"] += acc["images"]
            merged["objects"] += acc["objects"]
            merged["max_objects_per_image"] = max(
                merged["max_objects_per_image"], acc["max_objects_per_image"])
            for key in ("objects_per_class", "objects_per_image", "box_sizes"):
                merged[key] = dict(Counter(merged[key]) + Counter(acc[key]))
        return merged

    def extract_output(self, acc: dict) -> dict:
        return acc


def _count(counts: dict[str, int], keys: Iterable[str]) -> None:
    for key in keys:
        counts[key] = counts.get(key, 0) + 1


def read_side_outputs(work: Path) -> tuple[list[Issue], dict[str, dict]]:
    """The issues and per-split summaries the pipeline wrote to ``work``."""
    issues = [Issue(**json.loads(line)) for line in _lines(work / f"{ISSUES_FILE}.jsonl")]
    summaries = dict(json.loads(line) for line in _lines(work / f"{SUMMARIES_FILE}.jsonl"))
    return sorted(issues, key=lambda i: (i.split, i.file, i.reason, i.detail)), summaries


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()]
