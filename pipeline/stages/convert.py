"""Stage ``convert``: a VOC or COCO dataset -> sharded TFRecords for the OD API, with Apache Beam.

The driver reads the annotation metadata (small: no image is opened) into :class:`ImageRecord`s,
builds the label map and deals the records into shards. Beam then writes each shard on a worker:
it loads every image (fully decoded, so truncated or corrupt files are caught here and not in
training), fixes what can be fixed (EXIF orientation, colour mode, 16-bit, boxes outside the
image), skips what cannot, encodes ``tf.train.Example``s and streams them into
``{split}.tfrecord-SSSSS-of-NNNNN``. Only one image at a time is in a worker's memory, so memory
does not grow with the dataset. Every fix or skip increments a Beam counter and becomes an
:class:`Issue` in ``data_report.json`` / ``data_report.md``; identical image content in two
splits is reported as leakage.

Everything is written to ``<output>.partial`` first and renamed to ``<output>`` only once the
run and the report are complete, so an interrupted run never leaves output that looks done.

``data_report.json``: ``format``, ``root``, ``classes`` ([{id, name}]), ``images``, ``objects``,
``max_objects_per_image``, ``issue_counts`` ({reason: n}), ``counters`` (the Beam counters:
the same counts as the runner saw them, plus ``images_written``, ``shards_written``),
``warnings`` ([str]), ``plots`` ([file]) and ``splits``: {split: {images_listed, images
(written), objects, objects_per_class, max_objects_per_image, objects_per_image ({n: images}),
box_sizes ({bin: boxes}), shards, issue_counts, issues: [{file, split, reason, action,
detail}]}}. Reasons and actions are listed in :data:`REASONS`.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import math
import os
import pickle
import shutil
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.tfrecordio import _TFRecordUtil
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.runner import PipelineRunner
from PIL import Image, ImageOps

from pipeline.core import layout
from pipeline.core import redaction
from pipeline.tracking import journal as tracking
from pipeline.data.readers.coco import read_coco
from pipeline.core.errors import PipelineError
from pipeline.data.images import ImageTooLarge, open_image, to_rgb
from pipeline.data.labelmap import LabelMap, build_label_map, write_label_map
from pipeline.core.files import staged_output
from pipeline.core.params import ConvertParams, DataParams, Params
from pipeline.core.records import SPLITS, ImageRecord, ObjectAnnotation, is_inside, link_leaving
from pipeline.data.tfexample import build_example
from pipeline.data.readers.voc import read_voc

log = logging.getLogger(__name__)

#: Beam's side outputs (issues, per-split summaries) go here, inside the partial output.
WORK_DIR = "_beam"
#: Auto sharding: OD API input readers interleave shards; ~1000 images each keeps files ~100 MB.
IMAGES_PER_SHARD = 1000
#: A worker logs its progress every this many images of a shard.
PROGRESS_EVERY = 250
#: DirectRunner 'multi_processing' starts one Python per worker (each imports Beam and this
#: package: seconds of fixed cost). Measured on the 2-core machine (shared, so noisy), BCCD
#: replicated: 4,000 images 23.5 s in-process vs 28.2 s with 2 worker processes; 20,000 images
#: 103 s vs 78 s. So one in-process worker below this many images; ``pipeline_args`` (e.g.
#: ``--direct_running_mode=...``) can always force a mode.
MULTIPROCESSING_MIN_IMAGES = 10_000
METRICS_NAMESPACE = "convert"
ISSUES_TAG = "issues"
STATS_TAG = "stats"
CONTENT_TAG = "content"
EXIF_ORIENTATION = 0x0112
#: Box size bins (square root of the area, pixels) in the report; 32 and 96 are COCO's
#: small / medium / large limits.
BOX_SIZE_EDGES = (8, 16, 32, 64, 96, 128, 256, 512)
#: Every issue reason -> its action: ``skipped`` (the image), ``fixed``, ``dropped_box`` or
#: ``suspicious`` (written as it is, worth a look).
REASONS = {
    "missing_annotation": "skipped", "bad_annotation": "skipped", "unsafe_annotation": "skipped",
    "unsafe_path": "skipped", "unsafe_link": "skipped", "missing_image": "skipped",
    "corrupt_image": "skipped", "image_too_large": "skipped",
    "size_mismatch": "skipped or fixed (data.size_mismatch)", "size_missing": "fixed",
    "exif_rotated": "fixed", "exif_orientation_ignored": "fixed", "converted_to_rgb": "fixed",
    "reencoded_as_jpeg": "fixed", "box_clipped": "fixed",
    "empty_box": "dropped_box", "non_finite_box": "dropped_box", "unknown_label": "dropped_box",
    "leakage": "suspicious",
    "duplicate_image": "suspicious",
}


@dataclass(frozen=True)
class Issue:
    """One fix, skip or suspicion about one image (``file``) of one split."""

    file: str
    split: str
    reason: str
    action: str
    detail: str = ""


class ShardTask(NamedTuple):
    """One shard to write, ``{split}.tfrecord-{index}-of-{count}``; its records are in the file
    ``records`` (pickled by the driver: Beam's Create would compress them, seconds per 10,000)."""

    split: str
    index: int
    count: int
    records: str


class Prepared(NamedTuple):
    """One image ready to write: record with real size and clean boxes, JPEG, content hash."""

    record: ImageRecord
    jpeg: bytes
    content_sha256: str


class ConvertOutputs(NamedTuple):
    """The PCollections :func:`build_pipeline` produces (for tests and further steps)."""

    shards: beam.PCollection  # (split, shard file name, images written)
    issues: beam.PCollection  # Issue as a dict
    summaries: beam.PCollection  # (split, summary dict, see SplitSummaryFn)


# --- CLI ----------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m pipeline convert``."""
    parser.add_argument("--output", default=str(layout.RECORDS_DIR), help="output folder")
    parser.add_argument("--format", choices=("voc", "coco"), help="override data.format")
    parser.add_argument("--input", help="dataset root (override data.root), e.g. a VOC tree "
                        "with JPEGImages/ and Annotations/, or COCO split folders")
    parser.add_argument("--images", help="images folder (flat layouts; with --annotations)")
    parser.add_argument("--annotations", help="VOC: folder of XML files (may be the images "
                        "folder); COCO: one JSON file (split by data.val/test_fraction) or a "
                        "folder of per-split files (instances_train2017.json, ...)")


def run(args: argparse.Namespace, params: Params) -> None:
    """Convert the dataset named by params (and the CLI overrides) and log a summary."""
    # Beam logs every string type hint it meets at INFO (our annotations are strings).
    logging.getLogger("apache_beam.typehints.native_type_compatibility").setLevel(logging.WARNING)
    root = args.input or args.images or params.data.root
    data = replace(params.data, format=args.format or params.data.format, root=root)
    start = time.perf_counter()
    report = convert_dataset(data, params.convert, Path(args.output),
                             images=args.images, annotations=args.annotations)
    seconds = time.perf_counter() - start
    for split, info in report["splits"].items():
        log.info("%s: %d images, %d objects, %d issues", split, info["images"],
                 info["objects"], len(info["issues"]))
    for warning in report["warnings"]:
        log.warning("%s", warning)
    log.info("converted %d images in %.1f s (%.0f images/s); wrote %s (report: %s)",
             report["images_listed"], seconds, report["images_listed"] / max(seconds, 1e-9),
             args.output, Path(args.output) / layout.DATA_REPORT_MD)
    log_to_mlflow(params, data, report, Path(args.output))


def log_to_mlflow(params: Params, data: DataParams, report: dict, output_dir: Path) -> None:
    """A run of its own for the conversion: its params, counts per split, and the report."""
    journal = tracking.stage_journal(params.mlflow, "convert")
    journal.params({**tracking.flatten_params(params, ("convert",)),
                    "data.format": data.format, "data.root": data.root})
    journal.values({split: {"images": info["images"], "objects": info["objects"],
                            "issues": len(info["issues"])}
                    for split, info in report["splits"].items()})
    for name in (layout.LABEL_MAP, layout.DATA_REPORT_JSON, layout.DATA_REPORT_MD, *report["plots"]):
        journal.artifact(output_dir / name)
    tracking.finish(journal)


# --- driver -------------------------------------------------------------------------------------


def convert_dataset(
    data: DataParams, convert: ConvertParams, output_dir: Path, *,
    images: str | None = None, annotations: str | None = None,
) -> dict:
    """Read the dataset, run the Beam conversion, write everything to ``output_dir``.

    ``images`` / ``annotations`` name the folders (or COCO file) of a flat layout instead of
    ``data.root``. Returns the report (also written as ``data_report.json``). Raises
    PipelineError when the dataset cannot be read or the train split ends up empty.
    """
    inputs = [p for p in (data.root, images, annotations) if p]
    with staged_output(output_dir, inputs) as partial:  # refuses a foreign folder before work
        records = read_dataset(data, images, annotations)
        label_map = build_label_map(data.classes, records)
        check_unknown_classes(records, label_map, data)
        _require_train(Counter(r.split for r in records)["train"], "has no images")
        shards = num_shards_by_split(records, convert.num_shards)
        return _convert_into(partial, data, convert, records, label_map, shards)


def read_dataset(
    data: DataParams, images: str | None = None, annotations: str | None = None
) -> list[ImageRecord]:
    """Records of every split, from the reader of ``data.format``."""
    root = Path(data.root)
    if not (images or annotations) and not root.is_dir():
        raise PipelineError(f"dataset root {root} does not exist (data.root or --input)")
    fractions = {"val_fraction": data.val_fraction, "test_fraction": data.test_fraction}
    if data.format == "coco":
        return read_coco(root, data.coco_annotation_file, images=images,
                         annotations=annotations, **fractions)
    return read_voc(root, images=images, annotations=annotations, **fractions)


def check_unknown_classes(records: Sequence[ImageRecord], label_map: LabelMap,
                          data: DataParams) -> None:
    """With ``data.unknown_classes: error``, stop when a label is not in ``data.classes``."""
    unknown = Counter(o.label for r in records for o in r.objects if o.label not in label_map)
    if unknown and data.unknown_classes == "error":
        found = ", ".join(f"{name!r} ({n} boxes)" for name, n in sorted(unknown.items()))
        raise PipelineError(f"labels not in data.classes: {found}; add them to data.classes "
                            "or set data.unknown_classes: skip")


def num_shards_by_split(records: Sequence[ImageRecord], num_shards: int) -> dict[str, int]:
    """``num_shards`` for every split, or (0 = auto) one shard per IMAGES_PER_SHARD images."""
    counts = Counter(record.split for record in records)
    return {s: num_shards or max(1, math.ceil(counts[s] / IMAGES_PER_SHARD)) for s in SPLITS}


def shard_tasks(
    records: Sequence[ImageRecord], shards: Mapping[str, int], folder: str
) -> list[ShardTask]:
    """Records dealt round-robin into their split's shards (every shard exists, maybe empty);
    each shard's records are written to a file in ``folder``."""
    tasks = []
    for split, count in shards.items():
        in_split = [r for r in records if r.split == split]
        for index in range(count):
            path = FileSystems.join(folder, f"{split}-{index:05d}.pickle")
            with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as out:
                out.write(pickle.dumps(tuple(in_split[index::count]), pickle.HIGHEST_PROTOCOL))
            tasks.append(ShardTask(split, index, count, path))
    return tasks


def load_shard_records(path: str) -> tuple[ImageRecord, ...]:
    """The records :func:`shard_tasks` wrote (our own file, never user input)."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        return pickle.loads(handle.read())


def pipeline_options(convert: ConvertParams, num_images: int) -> PipelineOptions:
    """Runner and ``pipeline_args`` from params; DirectRunner parallelism chosen by size."""
    args = ["--runner", convert.runner]
    if convert.runner == "DirectRunner":
        workers = convert.direct_num_workers or os.cpu_count() or 1
        parallel = workers > 1 and num_images >= MULTIPROCESSING_MIN_IMAGES
        mode = "multi_processing" if parallel else "in_memory"
        args += ["--direct_num_workers", str(workers if parallel else 1),
                 "--direct_running_mode", mode]
    # The user's pipeline_args come last so that they win over the defaults above.
    # $VARS are expanded here, so secrets stay in the environment, not in params or dvc.lock.
    user_args = [os.path.expandvars(a) for a in convert.pipeline_args]
    return PipelineOptions([*args, *redaction.join_secret_values(user_args)])


def make_runner(options: PipelineOptions) -> PipelineRunner | None:
    """None (Beam picks the runner named in options), except for DirectRunner: see below.

    Beam 2.77's DirectRunner first tries the Prism runner, which downloads a Go binary from
    GitHub at run time (fails offline, ignores ``direct_running_mode``) and only then falls back
    to the FnApiRunner. We build that FnApiRunner directly, exactly as DirectRunner does.
    """
    if options.view_as(StandardOptions).runner not in (None, "DirectRunner"):  # None: default
        return None
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    info = beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)
    return fn_runner.FnApiRunner(provision_info=fn_runner.ExtendedProvisionInfo(info))


def _convert_into(
    partial: Path, data: DataParams, convert: ConvertParams, records: Sequence[ImageRecord],
    label_map: LabelMap, shards: Mapping[str, int],
) -> dict:
    log.info("converting %d images (shards: %s) to %s", len(records), dict(shards), partial)
    options = pipeline_options(convert, len(records))
    pipeline = beam.Pipeline(runner=make_runner(options), options=options)
    build_pipeline(pipeline, records, partial, label_map, shards, data.size_mismatch)
    result = pipeline.run()
    result.wait_until_finish()
    issues, summaries = read_side_outputs(partial / WORK_DIR)
    report = build_report(data, label_map, records, summaries, issues, shards)
    report["counters"] = beam_counters(result)
    _require_train(report["splits"]["train"]["images"], "has no usable images (all skipped)")
    shutil.rmtree(partial / WORK_DIR)
    write_label_map(label_map, partial / layout.LABEL_MAP)
    report["plots"] = write_plots(report, partial / layout.DATA_PLOTS_DIR)
    (partial / layout.DATA_REPORT_JSON).write_text(json.dumps(report, indent=2) + "\n")
    (partial / layout.DATA_REPORT_MD).write_text(report_markdown(report))
    return report


def beam_counters(result: beam.runners.runner.PipelineResult) -> dict[str, int]:
    """The pipeline's ``convert`` counters ({name: committed value}): every fix and skip by
    reason, ``images_written`` and ``shards_written``, as the runner (any runner) counted them."""
    query = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
    totals: Counter[str] = Counter()
    for counter in query["counters"]:
        totals[counter.key.metric.name] += counter.committed or 0
    return dict(sorted(totals.items()))


def _require_train(num_images: int, problem: str) -> None:
    if num_images == 0:
        raise PipelineError(f"the train split {problem}; training needs at least one image "
                            "(check the split lists, data.val/test_fraction or the train/ folder)")


# --- Beam ---------------------------------------------------------------------------------------


def build_pipeline(
    p: beam.Pipeline, records: Sequence[ImageRecord], output_dir: Path,
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
    _ = issues | "WriteIssues" >> WriteJsonLines(work / "issues", dict)
    _ = summaries | "WriteSummaries" >> WriteJsonLines(work / "summaries", list)
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
        example = build_example(clean, prepared.jpeg, self.label_map)
        _TFRecordUtil.write_record(out, example.SerializeToString())  # Beam's TFRecord framing
        Metrics.counter(METRICS_NAMESPACE, "images_written").inc()
        stats = ([o.label for o in clean.objects], [math.sqrt(o.area) for o in clean.objects])
        content = (prepared.content_sha256, (clean.split, _file_name(record)))
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
        return {"images": 0, "objects": 0, "objects_per_class": {}, "max_objects_per_image": 0,
                "objects_per_image": {}, "box_sizes": {}}

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


def box_size_bin(size: float) -> str:
    """The report's bin for a box of ``size`` = sqrt(area) pixels, e.g. ``"32-64"``."""
    low = 0
    for edge in BOX_SIZE_EDGES:
        if size < edge:
            return f"{low}-{edge}"
        low = edge
    return f">={low}"


def box_size_bins() -> list[str]:
    """Every bin of :func:`box_size_bin`, smallest first."""
    lows = (0, *BOX_SIZE_EDGES)
    return [f"{a}-{b}" for a, b in zip(lows, BOX_SIZE_EDGES)] + [f">={BOX_SIZE_EDGES[-1]}"]


# --- per-image checks and fixes (pure functions, run inside Beam) --------------------------------


def prepare_image(
    record: ImageRecord, label_map: LabelMap, issues: list[Issue], size_mismatch: str = "skip",
) -> Prepared | None:
    """Load, check and fix one image; None when it is skipped.

    Every fix or skip is appended to ``issues``. ``size_mismatch`` is the policy for a declared
    size that differs from the real one: ``skip`` the image, or ``rescale`` its boxes.
    """
    if not _usable_reference(record, issues):
        return None
    data = _read_bytes(record, issues)
    decoded = _decode(record, data, issues) if data is not None else None
    if decoded is None:
        return None
    image, size = decoded
    oriented = apply_orientation(record, image, issues) if image is not None else None
    scale = check_size(record, oriented.size if oriented else size, issues, size_mismatch)
    if scale is None:
        return None
    if oriented is None:  # an upright RGB JPEG: its own bytes are stored
        jpeg, sha = data, hashlib.sha256(data).hexdigest()
    else:
        try:
            jpeg, sha = rgb_jpeg(record, oriented, data, issues, rotated=oriented is not image)
        except (OSError, ValueError) as err:  # a mode Pillow cannot turn into RGB
            issues.append(_issue(record, "corrupt_image", "skipped", _one_line(err)))
            return None
        size = oriented.size
    objects = clean_objects(rescale(record, scale, issues), *size, label_map, issues)
    return Prepared(replace(record, width=size[0], height=size[1], objects=objects), jpeg, sha)


def _issue(record: ImageRecord, reason: str, action: str, detail: str = "") -> Issue:
    return Issue(_file_name(record), record.split, reason, action, detail)


def _file_name(record: ImageRecord) -> str:
    return record.image_path.replace("\\", "/").rsplit("/", 1)[-1]


def _usable_reference(record: ImageRecord, issues: list[Issue]) -> bool:
    """False (and reported) when the reader found a problem or the path leaves the root (by
    ``..``, an absolute path or a symbolic link); the report names the annotation file."""
    if record.problem:
        reason, _, detail = record.problem.partition(": ")
        issues.append(_issue(record, reason, "skipped", detail))
        return False
    named_by = f"{record.annotation} refers to " if record.annotation else ""
    if not is_inside(record.image_path, record.root):
        issues.append(_issue(record, "unsafe_path", "skipped", f"{named_by}{record.image_path}, "
                             f"which leaves the dataset folder {record.root}"))
        return False
    target = link_leaving(record.image_path, record.root)
    if target is not None:
        issues.append(_issue(record, "unsafe_link", "skipped", f"{named_by}{record.image_path}, "
                             f"a symbolic link to {target}, outside the dataset folder "
                             f"{record.root}"))
        return False
    return True


def _read_bytes(record: ImageRecord, issues: list[Issue]) -> bytes | None:
    try:  # FileSystems: the same code reads local, gs:// or s3:// paths on any runner
        with FileSystems.open(record.image_path,
                              compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            return handle.read()
    except Exception as err:  # noqa: BLE001 - Beam wraps I/O errors in its own types
        issues.append(_issue(record, "missing_image", "skipped", _one_line(err)))
        return None


def _decode(
    record: ImageRecord, data: bytes, issues: list[Issue]
) -> tuple[Image.Image | None, tuple[int, int]] | None:
    """(image, stored size), or None (reported) when the data is not a complete image.

    The image is None for an upright RGB JPEG, which is stored as its own bytes and only
    validated here: decoded at 1/8 scale, for which libjpeg still reads and checks every
    compressed block (a truncated or corrupt file fails exactly as in a full decode) at 2.5x
    less CPU. Anything else is fully decoded for the fixes that follow.
    """
    try:
        image = open_image(data, _file_name(record))
        size = image.size
        validate_only = (image.format == "JPEG" and image.mode == "RGB"
                         and image.getexif().get(EXIF_ORIENTATION, 1) == 1)
        if validate_only:
            image.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
        image.load()  # decodes: a truncated or corrupt file fails here, not in training
        return (None if validate_only else image), size
    except ImageTooLarge as err:
        issues.append(_issue(record, "image_too_large", "skipped", str(err)))
        return None
    except (OSError, SyntaxError, ValueError) as err:
        issues.append(_issue(record, "corrupt_image", "skipped", _one_line(err)))
        return None


def _one_line(err: Exception) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())[:300]


def apply_orientation(record: ImageRecord, image: Image.Image, issues: list[Issue]) -> Image.Image:
    """The image in the orientation its boxes refer to, deciding by the declared size.

    With an EXIF orientation that swaps width and height (5-8), a declared size equal to the
    stored one means the annotator saw the stored pixels: they are kept (TensorFlow ignores
    EXIF). Otherwise (rotated size declared, no size, a square image, or a flip / 180 degree
    turn where size cannot tell) the orientation is applied, as image viewers and annotation
    tools do when they show the image.
    """
    orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    if orientation not in range(2, 9):
        return image
    stored = image.size
    if orientation >= 5 and (record.width, record.height) == stored and stored[0] != stored[1]:
        issues.append(_issue(record, "exif_orientation_ignored", "fixed",
                             f"EXIF orientation {orientation}, but the declared size "
                             f"{stored[0]}x{stored[1]} is the stored one: stored pixels kept"))
        return image
    rotated = ImageOps.exif_transpose(image)
    issues.append(_issue(record, "exif_rotated", "fixed", f"EXIF orientation {orientation} "
                         f"applied: {stored[0]}x{stored[1]} -> {rotated.width}x{rotated.height}"))
    return rotated


def check_size(record: ImageRecord, size: tuple[int, int], issues: list[Issue],
               size_mismatch: str = "skip") -> tuple[float, float] | None:
    """Box scale factors (1, 1 normally), or None when the image is skipped.

    Declared size missing -> the real one is used. Different -> by policy: ``skip`` (the boxes
    cannot be trusted) or ``rescale`` (boxes scaled by real / declared size).
    """
    declared = (record.width, record.height)
    if declared == size:
        return 1.0, 1.0
    if 0 in declared:
        issues.append(_issue(record, "size_missing", "fixed", f"using real size {size}"))
        return 1.0, 1.0
    detail = f"annotation says {declared[0]}x{declared[1]}, image is {size[0]}x{size[1]}"
    if size_mismatch == "rescale":
        issues.append(_issue(record, "size_mismatch", "fixed", detail + ": boxes rescaled"))
        return size[0] / declared[0], size[1] / declared[1]
    issues.append(_issue(record, "size_mismatch", "skipped", detail))
    return None


def rescale(record: ImageRecord, scale: tuple[float, float], issues: list[Issue]) -> ImageRecord:
    """The record with its boxes multiplied by ``scale`` (x, y)."""
    if scale == (1.0, 1.0):
        return record
    sx, sy = scale
    objects = tuple(replace(o, xmin=o.xmin * sx, xmax=o.xmax * sx, ymin=o.ymin * sy,
                            ymax=o.ymax * sy) for o in record.objects)
    return replace(record, objects=objects)


def rgb_jpeg(
    record: ImageRecord, image: Image.Image, data: bytes, issues: list[Issue],
    rotated: bool = False,
) -> tuple[bytes, str]:
    """(JPEG bytes, sha256 of the source bytes): the original bytes when they already are an
    RGB JPEG in the right orientation, else the image re-encoded as one."""
    sha = hashlib.sha256(data).hexdigest()
    if image.format == "JPEG" and image.mode == "RGB" and not rotated:
        return data, sha  # no re-encoding: no extra JPEG loss, and much faster
    if image.mode != "RGB":
        issues.append(_issue(record, "converted_to_rgb", "fixed", f"mode {image.mode}"))
    source_format = image.format or Image.open(io.BytesIO(data)).format
    if source_format != "JPEG":
        issues.append(_issue(record, "reencoded_as_jpeg", "fixed", f"format {source_format}"))
    buffer = io.BytesIO()
    to_rgb(image).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue(), sha


def clean_objects(
    record: ImageRecord, width: int, height: int, label_map: LabelMap, issues: list[Issue]
) -> tuple[ObjectAnnotation, ...]:
    """Drop unknown labels, non-finite and empty boxes, clip the rest to the image."""
    kept = []
    for index, obj in enumerate(record.objects):
        where = f"object {index} {obj.label!r} box {_box(obj)}"
        if not all(map(math.isfinite, (obj.xmin, obj.ymin, obj.xmax, obj.ymax))):
            issues.append(_issue(record, "non_finite_box", "dropped_box", where))
            continue  # NaN passes every comparison below: it must never reach a record
        clipped = clip_box(obj, width, height)
        if obj.label not in label_map:
            issues.append(_issue(record, "unknown_label", "dropped_box", where))
        elif clipped.xmax <= clipped.xmin or clipped.ymax <= clipped.ymin:
            issues.append(_issue(record, "empty_box", "dropped_box", f"{where}: no area inside the image"))
        else:
            if clipped != obj:
                issues.append(_issue(record, "box_clipped", "fixed", f"{where} -> {_box(clipped)}"))
            kept.append(clipped)
    return tuple(kept)


def clip_box(obj: ObjectAnnotation, width: int, height: int) -> ObjectAnnotation:
    """The box limited to ``[0, width] x [0, height]``."""
    if 0 <= obj.xmin <= obj.xmax <= width and 0 <= obj.ymin <= obj.ymax <= height:
        return obj  # the common case, without building a copy
    return replace(
        obj,
        xmin=min(max(obj.xmin, 0.0), width), xmax=min(max(obj.xmax, 0.0), width),
        ymin=min(max(obj.ymin, 0.0), height), ymax=min(max(obj.ymax, 0.0), height),
    )


def _box(obj: ObjectAnnotation) -> list[float]:
    return [round(v, 2) for v in (obj.xmin, obj.ymin, obj.xmax, obj.ymax)]


# --- report -------------------------------------------------------------------------------------

#: data_report.md lists at most this many issues per reason (data_report.json has them all).
MD_ISSUES_PER_REASON = 50


def read_side_outputs(work: Path) -> tuple[list[Issue], dict[str, dict]]:
    """The issues and per-split summaries the pipeline wrote to ``work``."""
    issues = [Issue(**json.loads(line)) for line in _lines(work / "issues.jsonl")]
    summaries = dict(json.loads(line) for line in _lines(work / "summaries.jsonl"))
    return sorted(issues, key=lambda i: (i.split, i.file, i.reason, i.detail)), summaries


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()]


def build_report(
    data: DataParams, label_map: LabelMap, records: Sequence[ImageRecord],
    summaries: Mapping[str, dict], issues: Sequence[Issue], shards: Mapping[str, int],
) -> dict:
    """The machine-readable data report (schema in the module docstring)."""
    listed = Counter(record.split for record in records)
    by_split: dict[str, list[Issue]] = {split: [] for split in SPLITS}
    for issue in issues:
        by_split[issue.split].append(issue)
    splits = {split: split_report(listed[split], summaries.get(split), shards[split],
                                  by_split[split]) for split in SPLITS}
    return {
        "format": data.format,
        "root": str(data.root),
        "classes": [{"id": i, "name": n} for n, i in sorted(label_map.items(), key=lambda x: x[1])],
        "images_listed": len(records),
        "images": sum(s["images"] for s in splits.values()),
        "objects": sum(s["objects"] for s in splits.values()),
        "max_objects_per_image": max(s["max_objects_per_image"] for s in splits.values()),
        "issue_counts": dict(sorted(Counter(i.reason for i in issues).items())),
        "warnings": report_warnings(splits, label_map),
        "plots": [],
        "splits": splits,
    }


def split_report(listed: int, summary: dict | None, shards: int, issues: list[Issue]) -> dict:
    """One split's entry: counts written, histograms, issues and issue counts by reason."""
    summary = summary or SplitSummaryFn().create_accumulator()
    per_image = summary["objects_per_image"]
    return {
        "images_listed": listed,
        "images": summary["images"],
        "objects": summary["objects"],
        "objects_per_class": dict(sorted(summary["objects_per_class"].items())),
        "max_objects_per_image": summary["max_objects_per_image"],
        "objects_per_image": {k: per_image[k] for k in sorted(per_image, key=int)},
        "box_sizes": {b: summary["box_sizes"].get(b, 0) for b in box_size_bins()},
        "shards": shards,
        "issue_counts": dict(sorted(Counter(i.reason for i in issues).items())),
        "issues": [asdict(i) for i in issues],
    }


def report_warnings(splits: Mapping[str, dict], label_map: LabelMap) -> list[str]:
    """Problems that do not stop the conversion but deserve attention."""
    warnings = [f"split '{s}' is empty" for s in ("val", "test") if splits[s]["images"] == 0]
    train_counts = splits["train"]["objects_per_class"]
    warnings += [f"class '{c}' has no objects in train" for c in label_map if c not in train_counts]
    leaks = sum(s["issue_counts"].get("leakage", 0) for s in splits.values())
    if leaks:
        warnings.append(f"{leaks} images share their content with an image of another split "
                        "(leakage: evaluation on them is not independent)")
    return warnings


def write_plots(report: dict, folder: Path) -> list[str]:
    """Class histogram, box size distribution and objects per image (PNG, one bar per split).

    Returns the files written, relative to the output folder.
    """
    from matplotlib.figure import Figure  # a bare Figure renders with Agg, no pyplot state

    folder.mkdir(parents=True, exist_ok=True)
    classes = [c["name"] for c in report["classes"]]
    counts = sorted({int(n) for s in report["splits"].values() for n in s["objects_per_image"]})
    plots = {
        "class_histogram": ("objects per class", classes, "objects_per_class"),
        "box_sizes": ("box size (sqrt of area, pixels)", box_size_bins(), "box_sizes"),
        "objects_per_image": ("objects in one image", [str(n) for n in counts],
                              "objects_per_image"),
    }
    for name, (title, categories, key) in plots.items():
        figure = Figure(figsize=(max(5.0, 0.45 * len(categories) + 2), 3.6), layout="tight")
        _bars(figure.add_subplot(), title, categories,
              {s: info[key] for s, info in report["splits"].items()})
        figure.savefig(folder / f"{name}.png", dpi=100)
    return [f"{folder.name}/{name}.png" for name in plots]


def _bars(axes: Any, title: str, categories: list[str], per_split: Mapping[str, dict]) -> None:
    width = 0.8 / max(1, len(per_split))
    for offset, (split, values) in enumerate(per_split.items()):
        xs = np.arange(len(categories)) + offset * width
        axes.bar(xs, [values.get(c, 0) for c in categories], width, label=split)
    axes.set_xticks(np.arange(len(categories)) + 0.4 - width / 2, categories,
                    rotation=45 if len(categories) > 6 else 0, ha="right")
    axes.set_title(title)
    axes.set_ylabel("count")
    axes.legend()


def report_markdown(report: dict) -> str:
    """The readable summary: counts per split and class, plots, warnings and the issues."""
    classes = [c["name"] for c in report["classes"]]
    lines = [
        "# Data report", "",
        f"Dataset: `{report['root']}` ({report['format']}); classes: "
        + ", ".join(f"{c['id']}={c['name']}" for c in report["classes"]), "",
        "| split | images | objects | " + " | ".join(classes) + " | max/image | issues |",
        "|---|---:|---:|" + "---:|" * len(classes) + "---:|---:|",
    ]
    for split, s in report["splits"].items():
        per_class = " | ".join(str(s["objects_per_class"].get(c, 0)) for c in classes)
        lines.append(f"| {split} | {s['images']} / {s['images_listed']} | {s['objects']} | "
                     f"{per_class} | {s['max_objects_per_image']} | {len(s['issues'])} |")
    lines += ["", "Images: written / listed.", ""]
    lines += [f"**Warning:** {w}  " for w in report["warnings"]]
    lines += ["", *[f"![{p}]({p})" for p in report["plots"]], "", "## Issues by reason", ""]
    lines += [f"- {reason} ({REASONS.get(reason, '?')}): {n}"
              for reason, n in report["issue_counts"].items()] or ["- none"]
    return "\n".join(lines + _issue_lines(report)) + "\n"


def _issue_lines(report: dict) -> list[str]:
    issues = [i for s in report["splits"].values() for i in s["issues"]]
    lines = []
    for reason in report["issue_counts"]:
        of_reason = [i for i in issues if i["reason"] == reason]
        lines += ["", f"### {reason}", "", "| split | file | action | detail |", "|---|---|---|---|"]
        lines += [f"| {i['split']} | {i['file']} | {i['action']} | {i['detail']} |"
                  for i in of_reason[:MD_ISSUES_PER_REASON]]
        if len(of_reason) > MD_ISSUES_PER_REASON:
            lines.append(f"\n... and {len(of_reason) - MD_ISSUES_PER_REASON} more "
                         f"(all in {layout.DATA_REPORT_JSON})")
    return lines
