"""The data report of the convert stage: ``data_report.json``, ``data_report.md`` and plots.

``data_report.json``: ``format``, ``root``, ``classes`` ([{id, name}]), ``images``, ``objects``,
``max_objects_per_image``, ``issue_counts`` ({reason: n}), ``counters`` (the Beam counters:
the same counts as the runner saw them, plus ``images_written``, ``shards_written``),
``warnings`` ([str]), ``plots`` ([file]), ``derived_splits`` ({split: images taken from train,
see :mod:`pipeline.data.readers.splits`}) and ``splits``: {split: {images_listed, images
(written), objects, objects_per_class, max_objects_per_image, objects_per_image ({n: images}),
box_sizes ({bin: boxes}), box_shapes and box_shapes_longer_side ({class: {"i,j": boxes}}, see
:func:`box_shape_bin`), shards, issue_counts, issues: [{file, split, reason, action,
detail}]}}. Reasons and actions are listed in :data:`pipeline.data.checks.REASONS`.
"""
from __future__ import annotations

import functools
import io
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from pipeline.core import layout
from pipeline.core.params import DataParams
from pipeline.core.records import SPLITS, ImageRecord
from pipeline.data import storage
from pipeline.data.checks import REASONS, Issue
from pipeline.data.labelmap import LabelMap

#: Box size bins (square root of the area, pixels) in the report; 32 and 96 are COCO's
#: small / medium / large limits.
BOX_SIZE_EDGES = (8, 16, 32, 64, 96, 128, 256, 512)
#: data_report.md lists at most this many issues per reason (data_report.json has them all).
MD_ISSUES_PER_REASON = 50
#: The Markdown report's template, a package resource in ``pipeline/data/templates/``.
TEMPLATES_DIR = "templates"
MARKDOWN_TEMPLATE = "data_report.md.j2"
#: Box shapes are counted by the log2 of the box's width and height as fractions of the image,
#: in steps of 1/8 octave (bins 9% wide): fine enough to choose between input sizes 25% apart
#: and to fit anchor aspect ratios, while a class has at most 80 x 80 bins whatever its size.
BOX_SHAPE_BINS_PER_OCTAVE = 8
#: Fractions below 2**-10 (one pixel of a 1024-pixel side) are counted in the lowest bin.
BOX_SHAPE_LOWEST_BIN = -10 * BOX_SHAPE_BINS_PER_OCTAVE
#: The two frames of the box shapes: fractions of the image's width and height (what a
#: fixed-shape resizer keeps: it squashes the image) and of its longer side (what a
#: keep-aspect resizer padding to a square keeps).
BOX_SHAPE_FRAMES = ("box_shapes", "box_shapes_longer_side")


def empty_summary() -> dict:
    """One split's statistics before any image: what Beam's SplitSummaryFn accumulates."""
    return {"images": 0, "objects": 0, "objects_per_class": {}, "max_objects_per_image": 0,
            "objects_per_image": {}, "box_sizes": {},
            **{frame: {} for frame in BOX_SHAPE_FRAMES}}


def box_shape_bin(width_fraction: float, height_fraction: float) -> str:
    """The bin ``"i,j"`` of a box whose width and height are these fractions of the image (or
    of its longer side): ``i = floor(8 log2(width_fraction))``, likewise ``j``."""
    return f"{_shape_index(width_fraction)},{_shape_index(height_fraction)}"


def _shape_index(fraction: float) -> int:
    if fraction <= 0:
        return BOX_SHAPE_LOWEST_BIN
    return max(BOX_SHAPE_LOWEST_BIN, math.floor(math.log2(fraction) * BOX_SHAPE_BINS_PER_OCTAVE))


def box_shape_center(key: str) -> tuple[float, float]:
    """The (width, height) fractions at the geometric centre of bin ``key``."""
    i, j = (int(part) for part in key.split(","))
    return (2.0 ** ((i + 0.5) / BOX_SHAPE_BINS_PER_OCTAVE),
            2.0 ** ((j + 0.5) / BOX_SHAPE_BINS_PER_OCTAVE))


def image_stats(record: ImageRecord) -> tuple[list[str], list[float], list[tuple[str, ...]]]:
    """What the report counts of one converted image: its labels, its boxes' sizes (sqrt of
    the area, pixels) and shapes ((label, bin in each of :data:`BOX_SHAPE_FRAMES`))."""
    longer = max(record.width, record.height, 1)
    width, height = max(record.width, 1), max(record.height, 1)
    shapes = [(o.label, box_shape_bin((o.xmax - o.xmin) / width, (o.ymax - o.ymin) / height),
               box_shape_bin((o.xmax - o.xmin) / longer, (o.ymax - o.ymin) / longer))
              for o in record.objects]
    return ([o.label for o in record.objects], [math.sqrt(o.area) for o in record.objects],
            shapes)


def add_box_shapes(summary: dict, shapes: Sequence[tuple[str, ...]]) -> None:
    """Count ``shapes`` (from :func:`image_stats`) into a split summary."""
    for label, *bins in shapes:
        for frame, key in zip(BOX_SHAPE_FRAMES, bins):
            per_class = summary[frame].setdefault(label, {})
            per_class[key] = per_class.get(key, 0) + 1


def merge_box_shapes(into: dict, other: dict) -> None:
    """Add the box shapes of split summary ``other`` to ``into``."""
    for frame in BOX_SHAPE_FRAMES:
        for label, counts in other.get(frame, {}).items():
            merged = Counter(into[frame].get(label, {})) + Counter(counts)
            into[frame][label] = dict(merged)


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


def build_report(
    data: DataParams, label_map: LabelMap, listed: Mapping[str, int],
    summaries: Mapping[str, dict], issues: Sequence[Issue], shards: Mapping[str, int],
) -> dict:
    """The machine-readable data report (schema in the module docstring); ``listed``: images
    listed per split (the driver counts them, it does not keep the records)."""
    by_split: dict[str, list[Issue]] = {split: [] for split in SPLITS}
    for issue in issues:
        by_split[issue.split].append(issue)
    splits = {split: split_report(listed.get(split, 0), summaries.get(split), shards[split],
                                  by_split[split]) for split in SPLITS}
    return {
        "format": data.format,
        "root": str(data.root),
        "classes": [{"id": i, "name": n} for n, i in sorted(label_map.items(), key=lambda x: x[1])],
        "images_listed": sum(listed.values()),
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
    summary = summary or empty_summary()
    per_image = summary["objects_per_image"]
    return {
        "images_listed": listed,
        "images": summary["images"],
        "objects": summary["objects"],
        "objects_per_class": dict(sorted(summary["objects_per_class"].items())),
        "max_objects_per_image": summary["max_objects_per_image"],
        "objects_per_image": {k: per_image[k] for k in sorted(per_image, key=int)},
        "box_sizes": {b: summary["box_sizes"].get(b, 0) for b in box_size_bins()},
        **{frame: {label: dict(sorted(bins.items())) for label, bins
                   in sorted(summary.get(frame, {}).items())} for frame in BOX_SHAPE_FRAMES},
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


def write_plots(report: dict, folder: str | Path) -> list[str]:
    """Class histogram, box size distribution and objects per image (PNG, one bar per split),
    in a local or remote ``folder`` (:mod:`pipeline.data.storage`).

    Returns the files written, relative to the output folder.
    """
    from matplotlib.figure import Figure  # a bare Figure renders with Agg, no pyplot state

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
        png = io.BytesIO()
        figure.savefig(png, format="png", dpi=100)
        storage.write_bytes(storage.join(folder, f"{name}.png"), png.getvalue())
    return [f"{storage.path(folder).name}/{name}.png" for name in plots]


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
    """The readable summary (the template ``templates/data_report.md.j2``): counts per split
    and class, warnings, plots and the issues by reason."""
    return _templates().get_template(MARKDOWN_TEMPLATE).render(markdown_context(report))


def markdown_context(report: dict) -> dict:
    """The template's variables: the report's values, arranged in rows and groups."""
    names = [c["name"] for c in report["classes"]]
    issues = [i for s in report["splits"].values() for i in s["issues"]]
    rows = [{"split": split, "images": s["images"], "listed": s["images_listed"],
             "objects": s["objects"], "max_objects": s["max_objects_per_image"],
             "per_class": [s["objects_per_class"].get(c, 0) for c in names],
             "issues": len(s["issues"])} for split, s in report["splits"].items()]
    reasons = []
    for reason, count in report["issue_counts"].items():
        of_reason = [i for i in issues if i["reason"] == reason]
        reasons.append({"name": reason, "action": REASONS.get(reason, "?"), "count": count,
                        "issues": of_reason[:MD_ISSUES_PER_REASON],
                        "more": max(0, len(of_reason) - MD_ISSUES_PER_REASON)})
    return {"root": report["root"], "format": report["format"], "names": names,
            "class_ids": ", ".join(f"{c['id']}={c['name']}" for c in report["classes"]),
            "rows": rows, "warnings": report["warnings"], "plots": report["plots"],
            "reasons": reasons, "json_file": layout.DATA_REPORT_JSON}


@functools.lru_cache(maxsize=1)
def _templates() -> jinja2.Environment:
    # Markdown, not HTML: no autoescape. A missing variable is an error, not an empty string.
    return jinja2.Environment(
        loader=jinja2.PackageLoader("pipeline.data", TEMPLATES_DIR), autoescape=False,
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
        keep_trailing_newline=True)
