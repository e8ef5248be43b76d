"""The convert driver: a VOC or COCO dataset -> sharded TFRecords, a label map and a data report.

The driver reads the annotation metadata (no image is opened) into records
(:class:`~pipeline.core.records.ImageRecord`) with the reader of ``data.format``, one at a time:
it keeps only counts (images per split, boxes per label) and spools the records to a temporary
file (:func:`list_dataset`), so its memory does not grow with the dataset. It builds the label
map from the counts and deals the spooled records into shard files. The Beam graph
(:mod:`pipeline.data.beam`) then writes each shard on a worker, through the per-image checks of
:mod:`pipeline.data.checks`; the report (:mod:`pipeline.data.health`) is built from its results
and counters.

Everything is written to ``<output>.partial`` first and renamed to ``<output>`` only once the
run and the report are complete, so an interrupted run never leaves output that looks done.
The dataset and the output may be remote (``s3://``, ``gs://``...): every path goes through
Beam's ``FileSystems`` (:mod:`pipeline.data.storage`, which also says how a remote output is
published).
"""
from __future__ import annotations

import json
import logging
import math
import os
import pickle
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions
from apache_beam.runners.runner import PipelineResult, PipelineRunner

from pipeline.core import layout, progress, redaction
from pipeline.core.errors import PipelineError
from pipeline.core.params import ConvertParams, DataParams
from pipeline.core.records import SPLITS, ImageRecord
from pipeline.core.schema import did_you_mean
from pipeline.data import storage
from pipeline.data.beam import (
    METRICS_NAMESPACE, WORK_DIR, ConvertedImages, build_pipeline, dask_problems, read_pickled,
    read_results,
)
from pipeline.data.health import build_report, report_markdown, write_plots
from pipeline.data.labelmap import LabelMap, label_map_for, label_map_text
from pipeline.data.readers import registry
from pipeline.data.readers.splits import (
    DERIVABLE, derived_note, missing_fractions, move_to_derived,
)

log = logging.getLogger(__name__)

#: Auto sharding: OD API input readers interleave shards; ~1000 images each keeps files ~100 MB.
IMAGES_PER_SHARD = 1000
#: DirectRunner 'multi_processing' starts one Python per worker (each imports Beam and this
#: package: seconds of fixed cost). Measured on the 2-core machine (shared, so noisy), BCCD
#: replicated: 4,000 images 23.5 s in-process vs 28.2 s with 2 worker processes; 20,000 images
#: 103 s vs 78 s. So one in-process worker below this many images; ``pipeline_args`` (e.g.
#: ``--direct_running_mode=...``) can always force a mode.
MULTIPROCESSING_MIN_IMAGES = 10_000
#: ``convert.runner: dask``: Beam does not register the short name ``DaskRunner``.
DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"


def convert_dataset(
    data: DataParams, convert: ConvertParams, output_dir: str | Path, *,
    images: str | None = None, annotations: str | None = None,
) -> dict:
    """Read the dataset, run the Beam conversion, write everything to ``output_dir`` (a local
    folder or a URL).

    ``images`` / ``annotations`` name the folders (or COCO file) of a flat layout instead of
    ``data.root``. Returns the report (also written as ``data_report.json``). Raises
    PipelineError when the dataset cannot be read or the train split ends up empty.
    """
    inputs = [p for p in (data.root, images, annotations) if p]
    # The driver reads and writes remote storage too: its FileSystems take the pipeline's
    # options (e.g. --s3_endpoint_url), as the runner's workers do.
    FileSystems.set_options(pipeline_options(convert, 0))
    with storage.staged_folder(output_dir, inputs) as partial, \
            tempfile.TemporaryFile() as spool, tempfile.TemporaryFile() as moved:
        with progress.Bar(read_dataset(data, images, annotations), desc="read annotations",
                          unit="img") as records:
            listing = list_dataset(records, spool)
        listing, derived = derive_missing_splits_of(listing, data, moved)
        label_map = label_map_for(data.classes, listing.labels)
        _require_train(listing.splits["train"], "has no images")
        check_train_objects(listing, label_map)
        check_unknown_classes(listing.labels, label_map, data)
        shards = num_shards_by_split(listing.splits, convert.num_shards)
        return _convert_into(partial, data, convert, listing, label_map, shards, derived)


def read_dataset(
    data: DataParams, images: str | None = None, annotations: str | None = None
) -> Iterable[ImageRecord]:
    """Records of every split, from the reader of ``data.format``."""
    root = storage.path(data.root)
    if not (images or annotations) and not root.is_dir():
        raise PipelineError(f"dataset root {root} does not exist (data.root or --input)")
    return registry.reader(data.format)(root, data, images, annotations)


@dataclass(frozen=True)
class Listing:
    """What the driver keeps of a dataset: images per split and boxes per label. The records
    themselves wait in ``spool`` (a temporary file), so the driver's memory does not grow with
    the dataset."""

    splits: Counter[str]
    labels: Counter[str]
    train_labels: Counter[str]
    spool: IO[bytes]

    def records(self) -> Iterator[ImageRecord]:
        """The records, read back one at a time in the reader's order."""
        self.spool.seek(0)
        return read_pickled(self.spool)


def list_dataset(records: Iterable[ImageRecord], spool: IO[bytes]) -> Listing:
    """Count ``records`` while writing them to ``spool`` (consumed once, never all in memory)."""
    splits, labels, train_labels = Counter[str](), Counter[str](), Counter[str]()
    for record in records:
        splits[record.split] += 1
        labels.update(obj.label for obj in record.objects)
        if record.split == "train":
            train_labels.update(obj.label for obj in record.objects)
        pickle.dump(record, spool, pickle.HIGHEST_PROTOCOL)
    return Listing(splits, labels, train_labels, spool)


def derive_missing_splits_of(listing: Listing, data: DataParams,
                             spool: IO[bytes]) -> tuple[Listing, dict[str, int]]:
    """The listing with a missing val / test split taken from train by id hash (see
    :mod:`pipeline.data.readers.splits`), spooled again to ``spool``, and the number of images
    moved to each derived split (``{}`` and the listing itself when nothing is derived)."""
    present = {split for split, count in listing.splits.items() if count}
    fractions = missing_fractions(present, data.val_fraction, data.test_fraction)
    if fractions is None:
        return listing, {}
    moved = list_dataset((move_to_derived(r, fractions) for r in listing.records()), spool)
    return moved, {split: moved.splits[split] for split in DERIVABLE
                   if fractions[split] and moved.splits[split]}


def check_unknown_classes(labels: Mapping[str, int], label_map: LabelMap,
                          data: DataParams) -> None:
    """With ``data.unknown_classes: error``, stop when a label (``labels``: boxes per label) is
    not in ``data.classes``."""
    unknown = {label: n for label, n in labels.items() if label not in label_map}
    if unknown and data.unknown_classes == "error":
        found = ", ".join(f"{name!r} ({n} boxes)" for name, n in sorted(unknown.items()))
        raise PipelineError(f"labels not in data.classes: {found}; add them to data.classes "
                            "or set data.unknown_classes: skip")


def check_train_objects(listing: Listing, label_map: LabelMap) -> None:
    """Stop when no box in train has a label of the label map (training would see no object),
    typically a typo in ``data.classes``: say which labels the annotations have, and the
    likely meant ones (case-insensitive and close matches)."""
    if any(label in label_map for label in listing.train_labels):
        return
    found = listing.labels
    message = f"the train split has no box of the classes {list(label_map)}"
    message += f"; labels in the annotations: {sorted(found)}" if found else "; no box at all"
    guesses = did_you_mean([name for name in label_map if name not in found], found)
    if guesses:
        message += "; did you mean " + ", ".join(
            f"{guess!r} for {name!r}" for name, guess in guesses.items()) + " in data.classes?"
    raise PipelineError(message)


def num_shards_by_split(images: Mapping[str, int], num_shards: int) -> dict[str, int]:
    """``num_shards`` for every split, or (0 = auto) one shard per IMAGES_PER_SHARD of its
    ``images``."""
    return {s: num_shards or max(1, math.ceil(images.get(s, 0) / IMAGES_PER_SHARD))
            for s in SPLITS}



def pipeline_options(convert: ConvertParams, num_images: int) -> PipelineOptions:
    """Runner and ``pipeline_args`` from params; DirectRunner parallelism chosen by size,
    DaskRunner's scheduler from ``convert.dask_address`` (none: a local cluster)."""
    user_args = [os.path.expandvars(a) for a in convert.pipeline_args]
    args = ["--runner", DASK_RUNNER if convert.runner == "dask" else convert.runner]
    if convert.runner == "DirectRunner":
        workers = convert.direct_num_workers or os.cpu_count() or 1
        parallel = workers > 1 and num_images >= MULTIPROCESSING_MIN_IMAGES
        mode = "multi_processing" if parallel else "in_memory"
        args += ["--direct_num_workers", str(workers if parallel else 1),
                 "--direct_running_mode", mode]
    if convert.runner == "dask":
        args += ["--dask_client_address", convert.dask_address] if convert.dask_address else []
        if not any(a.startswith(("--dask_npartitions", "--dask_partition_size")) for a in user_args):
            # DaskRunner puts 128 elements in one partition (one task): one shard each instead,
            # so that shards spread over the workers.
            args += ["--dask_partition_size", "1"]
    # The user's pipeline_args come last so that they win over the defaults above.
    # $VARS are expanded here, so secrets stay in the environment, not in params or dvc.lock.
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


def is_dask(options: PipelineOptions) -> bool:
    """Whether ``options`` name Beam's DaskRunner (``convert.runner: dask`` or its class path)."""
    return options.view_as(StandardOptions).runner == DASK_RUNNER


def runs_in_this_process(options: PipelineOptions) -> bool:
    """Whether the runner of ``options`` runs its workers in this process (the DirectRunner's
    ``in_memory`` and ``multi_threading`` modes), where their image counter can be read."""
    return (options.view_as(StandardOptions).runner in (None, "DirectRunner")
            and options.view_as(DirectOptions).direct_running_mode in ("in_memory",
                                                                       "multi_threading"))


def run_with_progress(pipeline: beam.Pipeline, options: PipelineOptions,
                      num_images: int) -> PipelineResult:
    """:func:`run_pipeline` with a bar of the images converted when the workers run in this
    process (:class:`~pipeline.data.beam.ConvertedImages`); elsewhere (other processes, other
    runners) the workers log their progress per shard."""
    start = ConvertedImages.count
    with progress.Bar(desc="convert", unit="img", total=num_images,
                      enabled=runs_in_this_process(options)) as bar, \
            progress.polled(bar, lambda: ConvertedImages.count - start):
        return run_pipeline(pipeline, options)


def run_pipeline(pipeline: beam.Pipeline, options: PipelineOptions) -> PipelineResult:
    """Run ``pipeline`` to the end; on Dask, refuse a graph Dask would run differently
    (PipelineError naming the steps) and close the client (and a local cluster) afterwards."""
    if is_dask(options):
        problems = dask_problems(pipeline)
        if problems:
            raise PipelineError("this conversion graph cannot run on Beam's DaskRunner (its "
                                "output would differ): " + "; ".join(problems))
    result = pipeline.run()
    try:
        result.wait_until_finish()
    finally:
        client = getattr(result, "client", None)  # DaskRunnerResult holds a dask Client
        if client is not None:
            client.close()  # also stops the local cluster the client started, if any
    return result


def _convert_into(
    partial: str, data: DataParams, convert: ConvertParams, listing: Listing,
    label_map: LabelMap, shards: Mapping[str, int], derived: Mapping[str, int],
) -> dict:
    num_images = sum(listing.splits.values())
    log.info("converting %d images (shards: %s) to %s", num_images, dict(shards), partial)
    options = pipeline_options(convert, num_images)
    pipeline = beam.Pipeline(runner=make_runner(options), options=options)
    build_pipeline(pipeline, listing.records(), partial, label_map, shards, data.size_mismatch)
    result = run_with_progress(pipeline, options, num_images)
    work = storage.join(partial, WORK_DIR)
    issues, summaries, counted = read_results(work)
    report = build_report(data, label_map, listing.splits, summaries, issues, shards)
    report["counters"] = beam_counters(result, counted)
    report["derived_splits"] = dict(derived)
    fractions = {"val": data.val_fraction, "test": data.test_fraction}
    report["warnings"][:0] = [derived_note(split, n, fractions[split])
                              for split, n in derived.items()]
    _require_train(report["splits"]["train"]["images"], "has no usable images (all skipped)")
    if report["splits"]["train"]["objects"] == 0:
        raise PipelineError("the train split has no usable objects (every box was dropped: "
                            f"{report['splits']['train']['issue_counts']}); training needs boxes")
    storage.delete_folder(work)
    storage.write_text(storage.join(partial, layout.LABEL_MAP), label_map_text(label_map))
    report["plots"] = write_plots(report, storage.join(partial, layout.DATA_PLOTS_DIR))
    storage.write_text(storage.join(partial, layout.DATA_REPORT_MD), report_markdown(report))
    # The JSON report last: a remote output is published in this order too (storage).
    storage.write_text(storage.join(partial, layout.DATA_REPORT_JSON),
                       json.dumps(report, indent=2) + "\n")
    return report


def beam_counters(result: PipelineResult, counted: Mapping[str, int] | None = None
                  ) -> dict[str, int]:
    """The pipeline's ``convert`` counters ({name: committed value}): every fix and skip by
    reason, ``images_written`` and ``shards_written``, as the runner counted them. A runner
    without metrics (DaskRunner) gets ``counted``: the same counts taken from the results."""
    try:
        query = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
    except NotImplementedError:
        if counted is None:
            raise
        log.info("the runner has no metrics: counters taken from the pipeline's results")
        return dict(sorted(counted.items()))
    totals: Counter[str] = Counter()
    for counter in query["counters"]:
        totals[counter.key.metric.name] += counter.committed or 0
    return dict(sorted(totals.items()))


def _require_train(num_images: int, problem: str) -> None:
    if num_images == 0:
        raise PipelineError(f"the train split {problem}; training needs at least one image "
                            "(check the split lists, data.val/test_fraction or the train/ folder)")


# --- Beam ---------------------------------------------------------------------------------------
