"""The Beam graph of the convert stage: shard tasks -> TFRecord shards and one results file.

:func:`build_pipeline` adds the conversion to any pipeline (a real runner, or Beam's
``TestPipeline`` in tests). The driver deals the records into shards (:func:`shard_tasks`);
``WriteShards`` writes each shard on a worker, one image at a time (only one image is in a
worker's memory, so memory does not grow with the dataset), through the per-image checks of
:mod:`pipeline.data.checks`, and emits one :class:`ShardResult` per shard: its issues, its
split's statistics and its images' content hashes. ``GatherShards`` brings the shard results
together and ``WriteResults`` merges them (split summaries, duplicate and leakage issues,
counters) into ``WORK_DIR/results.json`` for the driver (:func:`read_results`). Every fix or
skip also increments a counter in the ``convert`` metrics namespace, for runners that show them.

The graph is one straight chain with one sink on purpose: Beam's DaskRunner (2.77) computes only
the last sink of a pipeline, does not separate tagged outputs and duplicated elements in a
``GroupByKey`` after a ``Flatten``; :func:`dask_problems` names such steps so that a graph that
would give a different result on Dask is refused, never run.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import shutil
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict
from typing import IO, Any, NamedTuple

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.tfrecordio import _TFRecordUtil
from apache_beam.metrics import Metrics
from apache_beam.pipeline import AppliedPTransform, PipelineVisitor
from apache_beam.runners.common import DoFnSignature

from pipeline.core import layout
from pipeline.core.records import SPLITS, ImageRecord
from pipeline.data.checks import Issue, file_name, prepare_image, stored_jpeg_sha256
from pipeline.data.health import (add_box_shapes, box_size_bin, empty_summary, image_stats,
                                  merge_box_shapes)
from pipeline.data.labelmap import LabelMap
from pipeline.data.tfexample import build_example

log = logging.getLogger(__name__)

#: The gathered results go here, inside the partial output; the driver deletes it.
WORK_DIR = "_beam"
#: The results file in WORK_DIR (:func:`read_results`).
RESULTS_FILE = "results.json"
#: A worker logs its progress every this many images of a shard.
PROGRESS_EVERY = 250
METRICS_NAMESPACE = "convert"


class ConvertedImages:
    """Images :class:`WriteShardFn` has processed in this process (written or skipped): the
    driver's progress bar reads it while the runner's workers run in its process. One counter,
    no other per-image cost (the conversion is benchmarked)."""

    count = 0


class ShardTask(NamedTuple):
    """One shard to write, ``{split}.tfrecord-{index}-of-{count}``; its records are in the file
    ``records`` (pickled one by one by the driver: Beam's Create would compress them, seconds
    per 10,000, and would hold them all)."""

    split: str
    index: int
    count: int
    records: str


class ShardResult(NamedTuple):
    """What one written shard reports: its file, images written, issues (``Issue`` as dicts),
    its split's statistics (a :class:`SplitSummaryFn` accumulator) and (sha256, file) of
    every image written (for the duplicate and leakage checks)."""

    split: str
    file: str
    images: int
    issues: list[dict]
    summary: dict
    content: list[tuple[str, str]]


def shard_tasks(
    records: Iterable[ImageRecord], shards: Mapping[str, int], folder: str
) -> list[ShardTask]:
    """Records dealt round-robin into their split's shards (every shard exists, maybe empty),
    in one pass: each record is appended to its shard's file as it comes, so the driver never
    holds more than one (its memory does not grow with the dataset). The files are dealt in a
    local temporary folder, then copied one by one to ``folder`` (which may be remote: an
    upload buffers per open file, so never a hundred at once)."""
    tasks = {(split, index): ShardTask(split, index, count,
                                       FileSystems.join(folder, f"{split}-{index:05d}.pickle"))
             for split, count in shards.items() for index in range(count)}
    dealt = Counter[str]()
    with tempfile.TemporaryDirectory(prefix="shard-tasks-") as local:
        paths = {key: os.path.join(local, f"{key[0]}-{key[1]:05d}") for key in tasks}
        with contextlib.ExitStack() as stack:
            files = {key: stack.enter_context(open(path, "wb")) for key, path in paths.items()}
            for record in records:
                index = dealt[record.split] % shards[record.split]
                dealt[record.split] += 1
                pickle.dump(record, files[record.split, index], pickle.HIGHEST_PROTOCOL)
        for key, task in tasks.items():
            with open(paths[key], "rb") as source, \
                    FileSystems.create(task.records,
                                       compression_type=CompressionTypes.UNCOMPRESSED) as target:
                shutil.copyfileobj(source, target)
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
    p: beam.Pipeline, records: Iterable[ImageRecord], output_dir: str,
    label_map: LabelMap, num_shards_by_split: Mapping[str, int], size_mismatch: str = "skip",
) -> beam.PCollection:
    """Add the conversion to ``p``: shards in ``output_dir`` (a local or remote folder), the
    results in ``WORK_DIR/RESULTS_FILE``. Returns the PCollection of the one results dict."""
    output_dir = str(output_dir)
    work = FileSystems.join(output_dir, WORK_DIR)
    return (
        p
        | "CreateShards" >> beam.Create(
            shard_tasks(records, num_shards_by_split, FileSystems.join(work, "tasks")))
        # Create emits one bundle; a reshuffle lets the runner spread shards over its workers.
        | "Distribute" >> beam.Reshuffle()
        | "WriteShards" >> beam.ParDo(WriteShardFn(output_dir, label_map, size_mismatch))
        | "GatherShards" >> beam.GroupBy(lambda _: "all")
        | "WriteResults" >> beam.Map(write_results, FileSystems.join(work, RESULTS_FILE))
    )


class WriteShardFn(beam.DoFn):
    """ShardTask -> its TFRecord file, written one image at a time (memory stays flat), and one
    :class:`ShardResult`."""

    def __init__(self, output_dir: str, label_map: LabelMap, size_mismatch: str = "skip"):
        super().__init__()
        self.output_dir = str(output_dir)
        self.label_map = dict(label_map)
        self.size_mismatch = size_mismatch

    def process(self, task: ShardTask) -> Iterator[ShardResult]:
        name = layout.shard_name(task.split, task.index, task.count)
        path = FileSystems.join(self.output_dir, name)
        records = load_shard_records(task.records)
        result = ShardResult(task.split, name, 0, [], SplitSummaryFn().create_accumulator(), [])
        with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as out:
            for position, record in enumerate(records, start=1):
                result = self._convert(record, out, result)
                if position % PROGRESS_EVERY == 0 or position == len(records):
                    log.info("convert: %s: %d/%d images", name, position, len(records))
        Metrics.counter(METRICS_NAMESPACE, "shards_written").inc()
        yield result

    def _convert(self, record: ImageRecord, out: Any, result: ShardResult) -> ShardResult:
        """Write one image's example to ``out``; ``result`` with the image added."""
        ConvertedImages.count += 1
        issues: list[Issue] = []
        prepared = prepare_image(record, self.label_map, issues, self.size_mismatch)
        for issue in issues:
            Metrics.counter(METRICS_NAMESPACE, issue.reason).inc()
            result.issues.append(asdict(issue))
        if prepared is None:
            return result
        clean = prepared.record
        example = build_example(clean, prepared.jpeg, self.label_map,
                                stored_jpeg_sha256(prepared, issues))
        _TFRecordUtil.write_record(out, example.SerializeToString())  # Beam's TFRecord framing
        Metrics.counter(METRICS_NAMESPACE, "images_written").inc()
        SplitSummaryFn().add_input(result.summary, image_stats(clean))
        result.content.append((prepared.content_sha256, file_name(record)))
        return result._replace(images=result.images + 1)


def write_results(gathered: tuple[Any, Iterable[ShardResult]], path: str) -> dict:
    """The shard results merged (see :func:`merge_shard_results`), written to ``path``."""
    results = merge_shard_results(gathered[1])
    with FileSystems.create(path, mime_type="application/json",
                            compression_type=CompressionTypes.UNCOMPRESSED) as out:
        out.write(json.dumps(results, sort_keys=True).encode("utf-8"))
    return results


def merge_shard_results(shard_results: Iterable[ShardResult]) -> dict:
    """``shards`` ([[split, file, images]], sorted), ``summaries`` ({split: summary}),
    ``issues`` (sorted, with the duplicate and leakage issues) and ``counters`` ({name: n}:
    every issue reason, ``images_written``, ``shards_written``: what the ``convert`` metrics
    count, for runners without metrics)."""
    shards, issues, by_split = [], [], defaultdict(list)
    content: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for shard in shard_results:
        shards.append([shard.split, shard.file, shard.images])
        issues += shard.issues
        by_split[shard.split].append(shard.summary)
        for sha, file in shard.content:
            content[sha].append((shard.split, file))
    for entries in content.values():
        issues += duplicate_issues(entries)
    summaries = {split: SplitSummaryFn().merge_accumulators(by_split[split])
                 for split in SPLITS if split in by_split}
    counters = Counter(issue["reason"] for issue in issues)
    counters.update(images_written=sum(s[2] for s in shards), shards_written=len(shards))
    return {"shards": sorted(shards), "summaries": summaries, "counters": dict(sorted(counters.items())),
            "issues": sorted(issues, key=lambda i: (i["split"], i["file"], i["reason"], i["detail"]))}


def duplicate_issues(entries: Iterable[tuple[str, str]]) -> Iterator[dict]:
    """Issues for one content hash, given its (split, file) entries: ``leakage`` for every
    file when it spans splits, else ``duplicate_image`` for all but the first."""
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


class SplitSummaryFn(beam.CombineFn):
    """Per split: images, objects (per class), objects per image, box sizes and shapes
    (histograms)."""

    def create_accumulator(self) -> dict:
        return empty_summary()

    def add_input(self, acc: dict, stats: tuple) -> dict:
        """``stats``: (labels, box sizes[, box shapes]) of one image (health.image_stats)."""
        labels, sizes, *shapes = stats
        acc["images"] += 1
        acc["objects"] += len(labels)
        acc["max_objects_per_image"] = max(acc["max_objects_per_image"], len(labels))
        _count(acc["objects_per_class"], labels)
        _count(acc["objects_per_image"], [str(len(labels))])
        _count(acc["box_sizes"], [box_size_bin(size) for size in sizes])
        add_box_shapes(acc, shapes[0] if shapes else ())
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
            merge_box_shapes(merged, acc)
        return merged

    def extract_output(self, acc: dict) -> dict:
        return acc


def _count(counts: dict[str, int], keys: Iterable[str]) -> None:
    for key in keys:
        counts[key] = counts.get(key, 0) + 1


def read_results(work: str) -> tuple[list[Issue], dict[str, dict], dict[str, int]]:
    """The issues, per-split summaries and counters the pipeline wrote to ``work``."""
    path = FileSystems.join(str(work), RESULTS_FILE)
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        results = json.loads(handle.read())
    return [Issue(**i) for i in results["issues"]], results["summaries"], results["counters"]


def dask_problems(pipeline: beam.Pipeline) -> list[str]:
    """Steps of ``pipeline`` that Beam's DaskRunner (2.77) would run differently from other
    runners: tagged outputs (not separated), a ``Flatten`` (a ``GroupByKey`` after it
    duplicated elements), ``Read`` sources and stateful DoFns (unsupported), and more than one
    sink (only the last runs). [] when the graph is safe on Dask."""
    visitor = _DaskCheck()
    pipeline.visit(visitor)
    sinks = [label for label, outputs in visitor.outputs.items()
             if not outputs & visitor.consumed]
    if len(sinks) > 1:
        visitor.problems.append(f"{len(sinks)} sinks ({', '.join(sinks)}): only the last runs")
    return visitor.problems


class _DaskCheck(PipelineVisitor):
    def __init__(self) -> None:
        self.problems: list[str] = []
        self.outputs: dict[str, set[int]] = {}
        self.consumed: set[int] = set()

    def visit_transform(self, node: AppliedPTransform) -> None:
        transform, label = node.transform, node.full_label
        self.outputs[label] = {id(p) for p in node.outputs.values()}
        self.consumed |= {id(p) for p in node.inputs}
        self.consumed |= {id(s.pvalue) for s in node.side_inputs}
        if isinstance(transform, beam.ParDo):
            if len(node.outputs) > 1:
                self.problems.append(f"{label}: tagged outputs")
            if DoFnSignature(transform.fn).is_stateful_dofn():
                self.problems.append(f"{label}: a stateful DoFn")
        elif isinstance(transform, beam.Flatten):
            self.problems.append(f"{label}: a Flatten")
        elif isinstance(transform, beam.io.Read):
            self.problems.append(f"{label}: a Read source")
