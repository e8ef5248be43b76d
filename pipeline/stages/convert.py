"""Stage ``convert``: a VOC, COCO or YOLO dataset -> sharded TFRecords for the OD API, with Apache Beam.

This module is the command line: its options, the run and its MLflow record. The work is in
:mod:`pipeline.data`: the driver (:mod:`~pipeline.data.conversion`), the Beam graph
(:mod:`~pipeline.data.beam`), the per-image checks (:mod:`~pipeline.data.checks`) and the data
report (:mod:`~pipeline.data.health`, whose docstring describes ``data_report.json``).
"""
from __future__ import annotations

import argparse
import logging
import time
from dataclasses import replace
from pathlib import Path

from pipeline.core import layout
from pipeline.core.params import DataParams, Params
from pipeline.data import storage
from pipeline.data.conversion import convert_dataset
from pipeline.data.readers.registry import READERS
from pipeline.tracking import execution
from pipeline.tracking import journal as tracking

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m pipeline convert``."""
    parser.add_argument("--output", default=str(layout.RECORDS_DIR), help="output folder")
    parser.add_argument("--format", choices=tuple(READERS), help="override data.format")
    parser.add_argument("--input", help="dataset root (override data.root), e.g. a VOC tree "
                        "with JPEGImages/ and Annotations/, COCO split folders, or a YOLO tree")
    parser.add_argument("--images", help="images folder (flat layouts; with --annotations)")
    parser.add_argument("--annotations", help="VOC: folder of XML files (may be the images "
                        "folder); COCO: one JSON file (split by data.val/test_fraction) or a "
                        "folder of per-split files (instances_train2017.json, ...); YOLO: "
                        "folder of .txt labels (may be the images folder)")


def run(args: argparse.Namespace, params: Params) -> None:
    """Convert the dataset named by params (and the CLI overrides) and log a summary."""
    # Beam logs every string type hint it meets at INFO (our annotations are strings).
    logging.getLogger("apache_beam.typehints.native_type_compatibility").setLevel(logging.WARNING)
    root = args.input or args.images or params.data.root
    data = replace(params.data, format=args.format or params.data.format, root=root)
    start = time.perf_counter()
    report = convert_dataset(data, params.convert, args.output,
                             images=args.images, annotations=args.annotations)
    seconds = time.perf_counter() - start
    for split, info in report["splits"].items():
        log.info("%s: %d images, %d objects, %d issues", split, info["images"],
                 info["objects"], len(info["issues"]))
    for warning in report["warnings"]:
        log.warning("%s", warning)
    log.info("converted %d images in %.1f s (%.0f images/s); wrote %s (report: %s)",
             report["images_listed"], seconds, report["images_listed"] / max(seconds, 1e-9),
             args.output, storage.join(args.output, layout.DATA_REPORT_MD))
    log_to_mlflow(params, data, report, args.output)


def log_to_mlflow(params: Params, data: DataParams, report: dict, output_dir: str) -> None:
    """A run for the conversion (nested under the run of the pipeline execution): its params,
    counts per split, and the report (the files themselves when the output is local; a remote
    output's location as a param)."""
    journal = execution.stage_journal(params, "convert")
    journal.params({**tracking.flatten_params(params, ("convert",)),
                    "data.format": data.format, "data.root": data.root})
    journal.values({split: {"images": info["images"], "objects": info["objects"],
                            "issues": len(info["issues"])}
                    for split, info in report["splits"].items()})
    if storage.is_remote(output_dir):
        log.info("MLflow: the output %s is remote; its location is logged, not its files",
                 output_dir)
        journal.params({"convert.output": output_dir})
    else:
        for name in (layout.LABEL_MAP, layout.DATA_REPORT_JSON, layout.DATA_REPORT_MD,
                     *report["plots"]):
            journal.artifact(Path(output_dir) / name)
    tracking.finish(journal)

