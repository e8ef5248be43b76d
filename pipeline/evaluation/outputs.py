"""The files of the ``report`` stage: COCO JSON, tables, plots, pictures and the HTML page.

``metrics.json`` is written last (atomically): its presence marks a finished report.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from pipeline.core import layout
from pipeline.core import files
from pipeline.evaluation import coco as coco_eval
from pipeline.evaluation import confusion
from pipeline.evaluation import drawing
from pipeline.evaluation import html as html_report
from pipeline.evaluation.coco import GroundTruthImage, ImageDetections
from pipeline.evaluation.confusion import ConfusionResult


@dataclass(frozen=True)
class Pictures:
    """What is needed to draw ground truth vs predictions on test images."""

    truths: Sequence[GroundTruthImage]
    detections: Sequence[ImageDetections]
    images: Sequence[bytes]  # encoded, in the order of ``truths``
    categories: Mapping[int, str]
    num_samples: int
    num_worst: int
    score_threshold: float  # predictions below it are not drawn (as in the confusion matrix)


def write_all(output_dir: Path, metrics: dict, groundtruth: dict, results: list[dict],
              evaluator: Any, matrix: ConfusionResult, pictures: Pictures,
              about: Sequence[tuple[str, str]] = ()) -> None:
    """Write every report file into ``output_dir``, ``metrics.json`` last; the page shows
    ``about`` (what produced the report) and the training curves the train stage wrote into
    the same folder (``train_curves.csv``, ``eval_curves.csv``) when they are there."""
    coco_eval.save_coco(groundtruth, results, output_dir)
    write_per_class_csv(output_dir / layout.PER_CLASS_CSV, metrics["per_class"])
    write_per_class_markdown(output_dir / layout.PER_CLASS_MD, metrics["per_class"])
    curves = coco_eval.pr_curves(evaluator, iou=0.5)
    plots = output_dir / layout.REPORT_PLOTS_DIR
    write_pr_csv(plots / f"{layout.PR_CURVE}.csv", curves)
    plot_pr_curves(plots / f"{layout.PR_CURVE}.png", curves, metrics["per_class"])
    write_confusion_csv(plots / f"{layout.CONFUSION_MATRIX}.csv", matrix)
    plot_confusion(plots / f"{layout.CONFUSION_MATRIX}.png", matrix, metrics["confusion"])
    samples, worst = draw_pictures(output_dir / layout.REPORT_IMAGES_DIR, pictures, matrix.errors_per_image)
    page = html_report.render(metrics, [plots / f"{layout.PR_CURVE}.png", plots / f"{layout.CONFUSION_MATRIX}.png"],
                              samples, worst, about=about,
                              curves=training_curves_png(output_dir / layout.TRAIN_CURVES.name,
                                                         output_dir / layout.EVAL_CURVES.name))
    files.write_text_atomic(output_dir / layout.REPORT_HTML, page)
    files.write_json_atomic(output_dir / layout.METRICS_FILE, metrics)  # last: marks a finished report


def write_per_class_csv(path: Path, per_class: dict[str, dict]) -> None:
    """``class,ap,ap50,voc_ap50`` rows; empty cells for classes without ground truth."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "ap", "ap50", "voc_ap50"])
        for name, scores in per_class.items():
            writer.writerow([name, *(_cell(scores.get(k)) for k in ("ap", "ap50", "voc_ap50"))])


def write_per_class_markdown(path: Path, per_class: dict[str, dict]) -> None:
    """The per-class table in Markdown (for pull requests, wikis, MLflow notes)."""
    lines = ["| class | AP @[.5:.95] | AP @.5 | VOC AP @.5 |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | " + " | ".join(_fmt(s.get(k)) for k in ("ap", "ap50", "voc_ap50"))
              + " |" for name, s in per_class.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_pr_csv(path: Path, curves: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Long-format ``class,recall,precision`` rows (one per COCO recall point and class)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "recall", "precision"])
        for name, (recall, precision) in curves.items():
            writer.writerows([name, f"{r:.2f}", f"{p:.6f}"] for r, p in zip(recall, precision))


def write_confusion_csv(path: Path, matrix: ConfusionResult) -> None:
    """One ``actual,predicted`` row per counted pair (``dvc plots``' confusion template)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["actual", "predicted"])
        for i, actual in enumerate(matrix.labels):
            for j, predicted in enumerate(matrix.labels):
                writer.writerows([[actual, predicted]] * int(matrix.matrix[i, j]))


def _figure(width: float, height: float):
    # A bare Figure renders with Agg and never touches pyplot's global backend state.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


def training_curves_png(train_csv: Path, eval_csv: Path) -> bytes | None:
    """The training losses (and the val loss) and the val mAPs over steps, as PNG bytes for the
    page (not a report file: DVC renders the same CSVs); None when neither CSV exists."""
    train, evaluation = _read_columns(train_csv), _read_columns(eval_csv)
    if not train and not evaluation:
        return None
    figure = _figure(11, 4)
    losses, maps = figure.subplots(1, 2)
    for name, points in train.items():
        if "loss" in name.lower():
            losses.plot(*zip(*points), label=f"train {name}")
    if "val_loss" in evaluation:
        losses.plot(*zip(*evaluation["val_loss"]), "o-", label="val loss")
    for name, points in evaluation.items():
        if name != "val_loss":
            maps.plot(*zip(*points), "o-", label=f"val {name}")
    losses.set(xlabel="step", title="Losses")
    maps.set(xlabel="step", ylim=(0, 1), title="Validation mAP / mAR (COCO)")
    for axes in (losses, maps):
        axes.grid(alpha=0.3)
        if axes.lines:
            axes.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _read_columns(path: Path) -> dict[str, list[tuple[float, float]]]:
    """``{column: [(step, value)]}`` of a curves CSV (empty cells skipped; no file: {})."""
    if not path.is_file():
        return {}
    columns: dict[str, list[tuple[float, float]]] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            for name, value in row.items():
                if name != "step" and value not in ("", None):
                    columns.setdefault(name, []).append((float(row["step"]), float(value)))
    return columns


#: Classes named in the PR plot's legend; with more, per_class.csv/.md give each class's AP.
MAX_LEGEND_ENTRIES = 15


def plot_pr_curves(path: Path, curves: dict[str, tuple[np.ndarray, np.ndarray]],
                   per_class: dict[str, dict]) -> None:
    """Precision-recall curve per class at IoU 0.5, saved as PNG."""
    figure = _figure(6, 5)
    axes = figure.add_subplot()
    for name, (recall, precision) in curves.items():
        axes.plot(recall, precision, label=f"{name} (AP50 {_fmt(per_class[name]['ap50'])})")
    axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.05),
             title="Precision-recall on the test split (IoU 0.5)")
    axes.grid(alpha=0.3)
    if 0 < len(curves) <= MAX_LEGEND_ENTRIES:  # beyond, a legend would hide the plot
        axes.legend(loc="lower left")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)


#: The confusion figure's largest side, inches (x 100 dpi = 2000 px) whatever the class count.
CONFUSION_MAX_INCHES = 20.0
#: Up to this many labels (classes + background) every cell shows its count; above, only the
#: largest confusions do, and they are also listed beside the matrix.
ANNOTATE_ALL_UP_TO = 30
TOP_CONFUSIONS = 20
#: At most this many tick labels per axis (every k-th class above; the CSV has them all).
MAX_TICK_LABELS = 50


def plot_confusion(path: Path, matrix: ConfusionResult, thresholds: dict) -> None:
    """The confusion matrix as a heat map (rows: actual, columns: predicted) of bounded size:
    every count written up to ANNOTATE_ALL_UP_TO labels, else the largest confusions only."""
    size = len(matrix.labels)
    many = size > ANNOTATE_ALL_UP_TO
    figure = _figure(min(1.2 * size + 2, CONFUSION_MAX_INCHES),
                     min(1.0 * size + 1.6, CONFUSION_MAX_INCHES))
    grid = figure.add_gridspec(1, 2, width_ratios=(4, 1)) if many else None
    axes = figure.add_subplot(grid[0, 0] if many else 111)
    from matplotlib.colors import PowerNorm

    # Many classes: the square-root scale keeps the few off-diagonal counts visible.
    image = axes.imshow(matrix.matrix, cmap="Blues", norm=PowerNorm(0.5) if many else None)
    figure.colorbar(image, ax=axes, shrink=0.6 if many else 1.0)
    _confusion_ticks(axes, matrix.labels)
    cells = confusion.top_confusions(matrix, TOP_CONFUSIONS) if many else list(
        np.ndindex(matrix.matrix.shape))
    high = matrix.matrix.max() / 2 if matrix.matrix.size else 0
    for i, j in cells:
        count = matrix.matrix[i, j]
        axes.text(j, i, str(count), ha="center", va="center", fontsize=6 if many else 10,
                  color="white" if count > high else "black")
    title = f"Confusion at IoU {thresholds['iou']}, score >= {thresholds['score_threshold']}"
    if many:
        title += f"\n{size - 1} classes: the largest confusions labelled (all in the CSV)"
        _list_confusions(figure.add_subplot(grid[0, 1]), matrix, cells)
    axes.set(xlabel="predicted", ylabel="actual", title=title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)


def _confusion_ticks(axes: Any, labels: list[str]) -> None:
    if len(labels) <= ANNOTATE_ALL_UP_TO:
        axes.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
        axes.set_yticks(range(len(labels)), labels)
        return
    ticks = range(0, len(labels), -(-len(labels) // MAX_TICK_LABELS))  # every k-th, k = ceil
    names = [_short(labels[k]) for k in ticks]
    axes.set_xticks(ticks, names, rotation=90, fontsize=7)
    axes.set_yticks(ticks, names, fontsize=7)


def _list_confusions(axes: Any, matrix: ConfusionResult, cells: list[tuple[int, int]]) -> None:
    axes.axis("off")
    lines = [f"{matrix.matrix[i, j]:>6}  {_short(matrix.labels[i])} -> "
             f"{_short(matrix.labels[j])}" for i, j in cells]
    axes.text(0, 1, "\n".join(["largest confusions (actual -> predicted)", *lines]),
              va="top", ha="left", family="monospace", fontsize=9, transform=axes.transAxes)


def _short(name: str, width: int = 24) -> str:
    # The middle goes: class names often differ at the end (..._v1, ..._v2).
    keep = (width - 1) // 2
    return name if len(name) <= width else name[:keep] + "\u2026" + name[-keep:]


def draw_pictures(directory: Path, pictures: Pictures, errors: dict[int, int]
                  ) -> tuple[list[tuple[str, Path]], list[tuple[str, Path]]]:
    """PNGs of the first and of the worst test images; ``(caption, path)`` lists.

    ``directory`` is created even when no picture is asked for (report.sample_images and
    worst_images 0): it is a DVC output of the report stage, which DVC requires to exist."""
    directory.mkdir(parents=True, exist_ok=True)
    count = len(pictures.truths)
    samples = list(range(min(pictures.num_samples, count)))
    by_errors = sorted(range(count), key=lambda k: -errors.get(pictures.truths[k].image_id, 0))
    worst = [k for k in by_errors[:pictures.num_worst]
             if errors.get(pictures.truths[k].image_id, 0) > 0]
    return ([_draw(directory / f"sample_{n}.png", pictures, k, errors)
             for n, k in enumerate(samples)],
            [_draw(directory / f"worst_{n}.png", pictures, k, errors)
             for n, k in enumerate(worst)])


def _draw(path: Path, pictures: Pictures, k: int, errors: dict[int, int]) -> tuple[str, Path]:
    import cv2

    truth, det = pictures.truths[k], pictures.detections[k]
    image = cv2.cvtColor(cv2.imdecode(np.frombuffer(pictures.images[k], np.uint8),
                                      cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    image = _enlarged(image, min_side=320)  # small test images would be unreadable
    keep = det.scores >= pictures.score_threshold
    picture = drawing.ground_truth_vs_predictions(
        image, truth.boxes, truth.classes, det.boxes[keep], det.classes[keep], det.scores[keep],
        pictures.categories)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    return f"{truth.file_name}: {errors.get(truth.image_id, 0)} error(s)", path


def _enlarged(image: np.ndarray, min_side: int) -> np.ndarray:
    import cv2

    factor = min_side / min(image.shape[:2])
    if factor <= 1:
        return image
    size = (round(image.shape[1] * factor), round(image.shape[0] * factor))
    return cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
