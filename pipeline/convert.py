"""Stage ``convert``: a VOC or COCO dataset -> sharded TFRecords for the OD API, with Apache Beam.

The driver reads the annotation metadata (small) into :class:`ImageRecord`s and builds the label
map; Beam then loads every image, fixes what can be fixed (colour mode, boxes outside the image),
skips what cannot (unreadable files, size mismatch), encodes ``tf.train.Example``s and writes
``{split}.tfrecord-SSSSS-of-NNNNN`` shards. Every fix or skip increments a Beam counter and
becomes an :class:`Issue` in ``data_report.json`` / ``data_report.md``.

Everything is written to ``<output>.partial`` first and renamed to ``<output>`` only once the
run and the report are complete, so an interrupted run never leaves output that looks done.

``data_report.json``: ``format``, ``root``, ``classes`` ([{id, name}]), ``images``, ``objects``,
``max_objects_per_image``, ``issue_counts`` ({reason: n}), ``warnings`` ([str]) and ``splits``:
{split: {images_listed, images (written), objects, objects_per_class, max_objects_per_image,
shards, issue_counts, issues: [{file, split, reason, action, detail}]}}. Reasons: missing_image,
corrupt_image, size_mismatch (skipped); size_missing, converted_to_rgb, reencoded_as_jpeg,
box_clipped (fixed); empty_box, unknown_label (dropped_box).
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import math
import os
import shutil
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.runner import PipelineRunner
from PIL import Image

from pipeline import tracking
from pipeline.coco import read_coco
from pipeline.errors import PipelineError
from pipeline.labelmap import LabelMap, build_label_map, write_label_map
from pipeline.params import ConvertParams, DataParams, Params
from pipeline.records import SPLITS, ImageRecord, ObjectAnnotation
from pipeline.tfexample import build_example
from pipeline.voc import read_voc

log = logging.getLogger(__name__)

LABEL_MAP_FILE = "label_map.pbtxt"
REPORT_JSON = "data_report.json"
REPORT_MD = "data_report.md"
#: Beam's side outputs (issues, per-split summaries) go here, inside the partial output.
WORK_DIR = "_beam"
#: Auto sharding: OD API input readers interleave shards; ~1000 images each keeps files ~100 MB.
IMAGES_PER_SHARD = 1000
#: A worker logs its progress every this many images.
PROGRESS_EVERY = 500
#: DirectRunner 'multi_processing' starts one Python per worker; each imports Beam and
#: TensorFlow and every image travels to it over gRPC, ~10 s of fixed cost on 2 cores.
#: Measured on 2 cores (in_memory vs multi_processing with 2 workers): 400 sample images
#: 1.6 s vs 12.6 s; 4000 sample images 6.1 s vs 22.9 s; 300 PNGs of 3 Mpx (re-encoded)
#: 43 s vs 62 s. So one in-process worker is used below this many images; ``pipeline_args``
#: (e.g. ``--direct_running_mode=multi_processing``) can always force a mode.
MULTIPROCESSING_MIN_IMAGES = 20_000
METRICS_NAMESPACE = "convert"
ISSUES_TAG = "issues"
STATS_TAG = "stats"


@dataclass(frozen=True)
class Issue:
    """One fix or skip: ``action`` is ``fixed``, ``skipped`` (image) or ``dropped_box``."""

    file: str
    split: str
    reason: str
    action: str
    detail: str = ""


class ConvertOutputs(NamedTuple):
    """The PCollections :func:`build_pipeline` produces (for tests and further steps)."""

    examples: beam.PCollection  # (split, serialized tf.train.Example)
    issues: beam.PCollection  # Issue
    summaries: beam.PCollection  # (split, summary dict, see SplitSummaryFn)


# --- CLI ----------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m pipeline convert``."""
    parser.add_argument("--output", default="data/tfrecords", help="output folder")
    parser.add_argument("--format", choices=("voc", "coco"), help="override data.format")
    parser.add_argument("--input", help="dataset root (override data.root)")


def run(args: argparse.Namespace, params: Params) -> None:
    """Convert the dataset named by params (and the CLI overrides) and log a summary."""
    data = replace(
        params.data, format=args.format or params.data.format, root=args.input or params.data.root
    )
    report = convert_dataset(data, params.convert, Path(args.output))
    for split, info in report["splits"].items():
        log.info("%s: %d images, %d objects, %d issues", split, info["images"],
                 info["objects"], len(info["issues"]))
    for warning in report["warnings"]:
        log.warning("%s", warning)
    log.info("wrote %s (report: %s)", args.output, Path(args.output) / REPORT_MD)
    log_to_mlflow(params, data, report, Path(args.output))


def log_to_mlflow(params: Params, data: DataParams, report: dict, output_dir: Path) -> None:
    """A run of its own for the conversion: its params, counts per split, and the report."""
    with tracking.start_run(params.mlflow, "convert") as mlflow:
        mlflow.log_params({**tracking.flatten_params(params, ("convert",)),
                           "data.format": data.format, "data.root": data.root})
        for split, info in report["splits"].items():
            mlflow.log_metrics({f"{split}.images": info["images"],
                                f"{split}.objects": info["objects"],
                                f"{split}.issues": len(info["issues"])})
        tracking.log_existing_artifacts(
            mlflow, [output_dir / n for n in (LABEL_MAP_FILE, REPORT_JSON, REPORT_MD)])


# --- driver -------------------------------------------------------------------------------------


def convert_dataset(data: DataParams, convert: ConvertParams, output_dir: Path) -> dict:
    """Read the dataset, run the Beam conversion, write everything to ``output_dir``.

    Returns the report (also written as ``data_report.json``). Raises PipelineError when the
    dataset cannot be read or the train split ends up empty.
    """
    records = read_dataset(data)
    label_map = build_label_map(data.classes, records)
    _require_train(Counter(r.split for r in records)["train"], "has no images")
    shards = num_shards_by_split(records, convert.num_shards)
    output_dir = Path(output_dir)
    partial = output_dir.with_name(output_dir.name + ".partial")
    _reset_dir(partial)
    try:
        report = _convert_into(partial, data, convert, records, label_map, shards)
        _replace_dir(partial, output_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # never leave a half-written output behind
        raise
    return report


def read_dataset(data: DataParams) -> list[ImageRecord]:
    """Records of every split, from the reader of ``data.format``."""
    root = Path(data.root)
    if not root.is_dir():
        raise PipelineError(f"dataset root {root} does not exist (data.root or --input)")
    if data.format == "coco":
        return read_coco(root, data.coco_annotation_file)
    return read_voc(root)


def num_shards_by_split(records: Sequence[ImageRecord], num_shards: int) -> dict[str, int]:
    """``num_shards`` for every split, or (0 = auto) one shard per IMAGES_PER_SHARD images."""
    counts = Counter(record.split for record in records)
    return {s: num_shards or max(1, math.ceil(counts[s] / IMAGES_PER_SHARD)) for s in SPLITS}


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
    return PipelineOptions([*args, *convert.pipeline_args])


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
    log.info("converting %d images (%s) to %s", len(records), dict(shards), partial)
    options = pipeline_options(convert, len(records))
    with beam.Pipeline(runner=make_runner(options), options=options) as pipeline:
        build_pipeline(pipeline, records, partial, label_map, shards)
    issues, summaries = read_side_outputs(partial / WORK_DIR)
    report = build_report(data, label_map, records, summaries, issues, shards)
    _require_train(report["splits"]["train"]["images"], "has no usable images (all skipped)")
    shutil.rmtree(partial / WORK_DIR)
    write_label_map(label_map, partial / LABEL_MAP_FILE)
    (partial / REPORT_JSON).write_text(json.dumps(report, indent=2) + "\n")
    (partial / REPORT_MD).write_text(report_markdown(report))
    return report


def _require_train(num_images: int, problem: str) -> None:
    if num_images == 0:
        raise PipelineError(f"the train split {problem}; training needs at least one image "
                            "(check ImageSets/Main/train.txt or the train/ folder)")


def _reset_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


def _replace_dir(source: Path, target: Path) -> None:
    shutil.rmtree(target, ignore_errors=True)
    source.rename(target)


# --- Beam ---------------------------------------------------------------------------------------


def build_pipeline(
    p: beam.Pipeline, records: Sequence[ImageRecord], output_dir: Path,
    label_map: LabelMap, num_shards_by_split: Mapping[str, int],
) -> ConvertOutputs:
    """Add the conversion to ``p``: shards in ``output_dir``, issues and summaries in WORK_DIR."""
    output_dir, work = Path(output_dir), Path(output_dir) / WORK_DIR
    prepared = (
        p
        | "CreateRecords" >> beam.Create(list(records))
        # Create emits one bundle; a reshuffle lets the runner spread images over its workers.
        | "Distribute" >> beam.Reshuffle()
        | "PrepareExamples" >> beam.ParDo(PrepareExampleFn(label_map)).with_outputs(
            ISSUES_TAG, STATS_TAG, main="examples")
    )
    summaries = prepared[STATS_TAG] | "SummariseSplits" >> beam.CombinePerKey(SplitSummaryFn())
    _ = prepared.examples | "WriteSplits" >> WriteSplits(output_dir, num_shards_by_split)
    _ = prepared[ISSUES_TAG] | "WriteIssues" >> WriteJsonLines(work / "issues", asdict)
    _ = summaries | "WriteSummaries" >> WriteJsonLines(work / "summaries", list)
    return ConvertOutputs(prepared.examples, prepared[ISSUES_TAG], summaries)


class WriteSplits(beam.PTransform):
    """(split, serialized example) -> ``<dir>/{split}.tfrecord-SSSSS-of-NNNNN`` per split."""

    def __init__(self, output_dir: Path, num_shards_by_split: Mapping[str, int]):
        super().__init__()
        self.output_dir = Path(output_dir)
        self.num_shards = dict(num_shards_by_split)

    def expand(self, examples: beam.PCollection) -> dict[str, beam.PCollection]:
        splits = list(self.num_shards)
        parts = examples | "BySplit" >> beam.Partition(_split_index, len(splits), splits)
        return {
            split: parts[i]
            | f"Serialized_{split}" >> beam.Values()
            | f"Write_{split}" >> beam.io.WriteToTFRecord(
                str(self.output_dir / f"{split}.tfrecord"), num_shards=self.num_shards[split])
            for i, split in enumerate(splits)
        }


def _split_index(element: tuple[str, bytes], num_partitions: int, splits: list[str]) -> int:
    return splits.index(element[0])


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


class PrepareExampleFn(beam.DoFn):
    """ImageRecord -> (split, serialized tf.Example); issues and stats as tagged outputs."""

    def __init__(self, label_map: LabelMap):
        super().__init__()
        self.label_map = dict(label_map)
        self.done = 0

    def process(self, record: ImageRecord) -> Iterator[Any]:
        issues: list[Issue] = []
        prepared = prepare_image(record, self.label_map, issues)
        for issue in issues:
            Metrics.counter(METRICS_NAMESPACE, issue.reason).inc()
            yield beam.pvalue.TaggedOutput(ISSUES_TAG, issue)
        if prepared is None:
            return
        clean, jpeg = prepared
        Metrics.counter(METRICS_NAMESPACE, "images_written").inc()
        self._log_progress()
        yield clean.split, build_example(clean, jpeg, self.label_map).SerializeToString()
        yield beam.pvalue.TaggedOutput(STATS_TAG, (clean.split, [o.label for o in clean.objects]))

    def _log_progress(self) -> None:
        self.done += 1
        if self.done % PROGRESS_EVERY == 0:
            log.info("convert: this worker has encoded %d images", self.done)


class SplitSummaryFn(beam.CombineFn):
    """Per split: images, objects, objects per class and the most objects in one image."""

    def create_accumulator(self) -> dict:
        return {"images": 0, "objects": 0, "objects_per_class": {}, "max_objects_per_image": 0}

    def add_input(self, acc: dict, labels: list[str]) -> dict:
        acc["images"] += 1
        acc["objects"] += len(labels)
        acc["max_objects_per_image"] = max(acc["max_objects_per_image"], len(labels))
        acc["objects_per_class"] = dict(Counter(acc["objects_per_class"]) + Counter(labels))
        return acc

    def merge_accumulators(self, accumulators: Iterable[dict]) -> dict:
        merged = self.create_accumulator()
        for acc in accumulators:
            merged["images"] += acc["images"]
            merged["objects"] += acc["objects"]
            merged["max_objects_per_image"] = max(
                merged["max_objects_per_image"], acc["max_objects_per_image"])
            merged["objects_per_class"] = dict(
                Counter(merged["objects_per_class"]) + Counter(acc["objects_per_class"]))
        return merged

    def extract_output(self, acc: dict) -> dict:
        return acc


# --- per-image checks and fixes (pure functions, run inside Beam) --------------------------------


def prepare_image(
    record: ImageRecord, label_map: LabelMap, issues: list[Issue]
) -> tuple[ImageRecord, bytes] | None:
    """Load, check and fix one image: (record with real size and clean boxes, RGB JPEG bytes).

    Returns None when the image is skipped; every fix or skip is appended to ``issues``.
    """
    data = _read_bytes(record, issues)
    image = _decode(record, data, issues) if data is not None else None
    if image is None or not _size_ok(record, image.size, issues):
        return None
    jpeg = rgb_jpeg(record, image, data, issues)
    width, height = image.size
    objects = clean_objects(record, width, height, label_map, issues)
    return replace(record, width=width, height=height, objects=objects), jpeg


def _issue(record: ImageRecord, reason: str, action: str, detail: str = "") -> Issue:
    return Issue(os.path.basename(record.image_path), record.split, reason, action, detail)


def _read_bytes(record: ImageRecord, issues: list[Issue]) -> bytes | None:
    try:  # FileSystems: the same code reads local, gs:// or s3:// paths on any runner
        with FileSystems.open(record.image_path) as handle:
            return handle.read()
    except Exception as err:  # noqa: BLE001 - Beam wraps I/O errors in its own types
        issues.append(_issue(record, "missing_image", "skipped", _one_line(err)))
        return None


def _decode(record: ImageRecord, data: bytes, issues: list[Issue]) -> Image.Image | None:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()  # decodes fully: a truncated or corrupt file fails here, not in training
        return image
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        issues.append(_issue(record, "corrupt_image", "skipped", _one_line(err)))
        return None


def _one_line(err: Exception) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())[:300]


def _size_ok(record: ImageRecord, size: tuple[int, int], issues: list[Issue]) -> bool:
    """Declared size missing -> take the real one; different -> skip (boxes cannot be trusted)."""
    declared = (record.width, record.height)
    if declared == size:
        return True
    if 0 in declared:
        issues.append(_issue(record, "size_missing", "fixed", f"using real size {size}"))
        return True
    detail = f"annotation says {declared[0]}x{declared[1]}, image is {size[0]}x{size[1]}"
    issues.append(_issue(record, "size_mismatch", "skipped", detail))
    return False


def rgb_jpeg(record: ImageRecord, image: Image.Image, data: bytes, issues: list[Issue]) -> bytes:
    """The original bytes when they already are an RGB JPEG, else the image re-encoded as one."""
    if image.format == "JPEG" and image.mode == "RGB":
        return data  # no re-encoding: no extra JPEG loss, and much faster
    if image.mode != "RGB":
        issues.append(_issue(record, "converted_to_rgb", "fixed", f"mode {image.mode}"))
    if image.format != "JPEG":
        issues.append(_issue(record, "reencoded_as_jpeg", "fixed", f"format {image.format}"))
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def clean_objects(
    record: ImageRecord, width: int, height: int, label_map: LabelMap, issues: list[Issue]
) -> tuple[ObjectAnnotation, ...]:
    """Drop unknown labels and empty boxes, clip the rest to the image."""
    kept = []
    for index, obj in enumerate(record.objects):
        where = f"object {index} {obj.label!r} box {_box(obj)}"
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
    return replace(
        obj,
        xmin=min(max(obj.xmin, 0.0), width), xmax=min(max(obj.xmax, 0.0), width),
        ymin=min(max(obj.ymin, 0.0), height), ymax=min(max(obj.ymax, 0.0), height),
    )


def _box(obj: ObjectAnnotation) -> list[float]:
    return [round(v, 2) for v in (obj.xmin, obj.ymin, obj.xmax, obj.ymax)]


# --- report -------------------------------------------------------------------------------------


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
    splits = {
        split: split_report(listed[split], summaries.get(split), shards[split],
                            [i for i in issues if i.split == split])
        for split in SPLITS
    }
    return {
        "format": data.format,
        "root": str(data.root),
        "classes": [{"id": i, "name": n} for n, i in sorted(label_map.items(), key=lambda x: x[1])],
        "images": sum(s["images"] for s in splits.values()),
        "objects": sum(s["objects"] for s in splits.values()),
        "max_objects_per_image": max(s["max_objects_per_image"] for s in splits.values()),
        "issue_counts": dict(sorted(Counter(i.reason for i in issues).items())),
        "warnings": report_warnings(splits, label_map),
        "splits": splits,
    }


def split_report(listed: int, summary: dict | None, shards: int, issues: list[Issue]) -> dict:
    """One split's entry: counts written, issues and issue counts by reason."""
    summary = summary or SplitSummaryFn().create_accumulator()
    return {
        "images_listed": listed,
        "images": summary["images"],
        "objects": summary["objects"],
        "objects_per_class": dict(sorted(summary["objects_per_class"].items())),
        "max_objects_per_image": summary["max_objects_per_image"],
        "shards": shards,
        "issue_counts": dict(sorted(Counter(i.reason for i in issues).items())),
        "issues": [asdict(i) for i in issues],
    }


def report_warnings(splits: Mapping[str, dict], label_map: LabelMap) -> list[str]:
    """Problems that do not stop the conversion but deserve attention."""
    warnings = [f"split '{s}' is empty" for s in ("val", "test") if splits[s]["images"] == 0]
    train_counts = splits["train"]["objects_per_class"]
    warnings += [f"class '{c}' has no objects in train" for c in label_map if c not in train_counts]
    return warnings


def report_markdown(report: dict) -> str:
    """A short human-readable summary of the report."""
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
    lines += ["", "Images: written / listed. Issues by reason:", ""]
    lines += [f"- {reason}: {n}" for reason, n in report["issue_counts"].items()] or ["- none"]
    lines += [f"\nWarning: {w}" for w in report["warnings"]]
    return "\n".join(lines) + "\n"
