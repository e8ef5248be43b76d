"""Training defaults derived from the convert stage's data report, shown before training.

configure proposes, and applies unless the user pinned the param (:func:`pipeline.core.params.
pinned`: a pinned value always wins):

- ``model.image_size``: the smallest of the template's ``input_sizes`` (configs/models.yaml)
  at which :data:`KEPT_FRACTION` of every class's train boxes are at least
  :data:`MIN_BOX_PIXELS` after resizing; the last size is the template's cost cap;
- ``model.anchor_aspect_ratios``: the template's while they fit the boxes (as YOLOv5's
  autoanchor keeps its anchors while they fit), else the template's number of ratios fitted by
  k-means to the log aspect ratios of the train boxes at the model input (from scratch only);
- ``model.anchor_min_size``: the template's anchors scaled down (never up) so that the smallest
  anchor still matches the small boxes of every class (from scratch only);
- ``train.max_boxes``: the busiest image;
- ``train.num_steps`` (when 0): ``train.epochs`` x train images / ``train.batch_size``.

Everything here is pure (numpy on the report's histograms, no TensorFlow): each value comes
as a :class:`Choice` with the one line that explains it. The box shapes are the report's
``box_shapes`` (fractions of the image's width and height: a fixed-shape resizer squashes the
image) or ``box_shapes_longer_side`` (a keep-aspect resizer padding to a square).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.core.errors import PipelineError
from pipeline.core.params import ModelParams, TrainParams, pinned

#: A box smaller than this (sqrt of its area, input pixels) spans fewer than two cells of the
#: finest feature map of the default template (FPN level 3, stride 8): it can be seen, but
#: barely localised. One cell (8 px) kept BCCD at 256 px, where its platelets are 14 px; at
#: 320 px (18 px) in the same training time, test mAP was 0.511-0.531 against 0.486-0.505, in
#: three runs each (docs/benchmarks.md, "Input size for small boxes").
MIN_BOX_PIXELS = 16.0
#: "Most boxes": the share of every class's boxes the input size must keep at MIN_BOX_PIXELS.
#: Per class, because mAP averages over classes: a rare small class (BCCD's platelets) counts
#: as much as a frequent large one.
KEPT_FRACTION = 0.95
#: A box of side b and a concentric anchor of the same shape and side a > b overlap with IoU
#: (b / a)^2, at least 0.5 (the SSD matcher's threshold; Faster R-CNN's RPN asks 0.7 but keeps
#: each box's best anchor) while a <= sqrt(2) b.
ANCHOR_MATCH_FACTOR = math.sqrt(2.0)
#: Anchors are scaled down at most this much: a template spans a fixed number of octaves of
#: anchor sizes, and shrinking them further leaves the largest boxes without a matching anchor.
MIN_ANCHOR_FACTOR = 0.5
#: The template's aspect ratios fit the data when KEPT_FRACTION of every class's boxes have one
#: whose anchor of the same area overlaps them with at least this IoU (the rest of the way to
#: the matcher's 0.5 is left to the mismatch of sizes between the anchor scales). The template's
#: 0.5, 1, 2 fit every ratio from 0.34 to 2.9. Why not always fit them: on the sample (boxes
#: about square) the k-means gave 0.87, 1, 1.15 and test mAP@0.5 0.942 and 0.827 in two default
#: runs, against 0.914-0.973 with the template's (docs/benchmarks.md): a lean, not a proof.
RATIO_FIT_IOU = 0.7
#: Lloyd iterations of the 1-D k-means of the aspect ratios (it converges in a few).
KMEANS_ITERATIONS = 50
#: Fitted aspect ratios are rounded to this many decimals (the config stays readable).
RATIO_DECIMALS = 2

#: Where a value comes from.
PINNED, DERIVED, TEMPLATE = "pinned", "derived", "template"


@dataclass(frozen=True)
class TemplateFacts:
    """What the derivation needs to know of the template (pipeline_config reads them)."""

    image_size: int
    input_sizes: tuple[int, ...]
    keeps_aspect: bool
    aspect_ratios: tuple[float, ...]
    #: The smallest anchor's side = pixels + fraction x input size.
    smallest_anchor: tuple[float, float]
    max_boxes: int

    def smallest_anchor_px(self, size: int) -> float:
        pixels, fraction = self.smallest_anchor
        return pixels + fraction * size


@dataclass(frozen=True)
class Choice:
    """One value for the config: where it comes from and the log line that explains it."""

    key: str
    value: Any
    source: str
    reason: str


@dataclass(frozen=True)
class Defaults:
    """Every value configure derives, pinned or taken from the template."""

    image_size: Choice
    aspect_ratios: Choice
    anchor_factor: Choice
    max_boxes: Choice
    num_steps: Choice

    def choices(self) -> tuple[Choice, ...]:
        return (self.image_size, self.aspect_ratios, self.anchor_factor, self.max_boxes,
                self.num_steps)

    def lines(self) -> list[str]:
        """One line per value: ``input 384 px: keeps 95% of every class's boxes >= 16 px``."""
        return [f"{c.reason} [{c.source}]" for c in self.choices()]

    def mlflow_params(self) -> dict[str, str]:
        """``derived.<key>`` (the value) and ``derived.<key>.why`` (the line) for MLflow."""
        values = {}
        for choice in self.choices():
            value = choice.value
            text = ", ".join(f"{v:g}" for v in value) if isinstance(value, tuple) else str(value)
            values[f"derived.{choice.key}"] = text
            values[f"derived.{choice.key}.why"] = f"{choice.reason} [{choice.source}]"
        return values


@dataclass(frozen=True)
class Boxes:
    """The train boxes of the report in one frame: one row per histogram bin."""

    labels: np.ndarray    # class name of the bin
    width: np.ndarray     # width as a fraction of the frame (bin centre)
    height: np.ndarray
    count: np.ndarray     # boxes in the bin

    @property
    def total(self) -> int:
        return int(self.count.sum())

    def classes(self) -> list[str]:
        return sorted(set(self.labels.tolist()))


def train_boxes(report: dict, keeps_aspect: bool) -> Boxes | None:
    """The train split's box shapes of ``report`` (None when it has none: an older report)."""
    # Here, not at the top: pipeline.data.health loads Apache Beam (its checks), which
    # configure needs for nothing else.
    from pipeline.data.health import BOX_SHAPE_FRAMES, box_shape_center

    frame = BOX_SHAPE_FRAMES[1] if keeps_aspect else BOX_SHAPE_FRAMES[0]
    shapes = report.get("splits", {}).get("train", {}).get(frame) or {}
    rows = [(label, *box_shape_center(key), n)
            for label, bins in shapes.items() for key, n in bins.items() if n > 0]
    if not rows:
        return None
    labels, widths, heights, counts = zip(*rows)
    return Boxes(np.array(labels), np.array(widths), np.array(heights), np.array(counts))


def kept_fraction(boxes: Boxes, size: int) -> dict[str, float]:
    """Per class: the share of boxes at least MIN_BOX_PIXELS (sqrt of area) at input ``size``."""
    large = size * np.sqrt(boxes.width * boxes.height) >= MIN_BOX_PIXELS
    return {label: float(boxes.count[(boxes.labels == label) & large].sum()
                         / boxes.count[boxes.labels == label].sum())
            for label in boxes.classes()}


def derive_image_size(boxes: Boxes, facts: TemplateFacts) -> tuple[int, str]:
    """The smallest input size keeping KEPT_FRACTION of every class's boxes >= MIN_BOX_PIXELS,
    else the template's cost cap (the last of its sizes); with the explanation."""
    sizes = facts.input_sizes or (facts.image_size,)
    for size in sizes:
        kept = kept_fraction(boxes, size)
        if min(kept.values()) >= KEPT_FRACTION:
            return size, (f"input {size} px: keeps {_percent(min(kept.values()))} of every "
                          f"class's boxes >= {MIN_BOX_PIXELS:g} px{_step_cost(size, facts)}")
    size = sizes[-1]
    kept = kept_fraction(boxes, size)
    worst = min(kept, key=kept.get)
    return size, (f"input {size} px (the template's cost cap): keeps only "
                  f"{_percent(kept[worst])} of class {worst!r}'s boxes >= {MIN_BOX_PIXELS:g} px"
                  f"{_step_cost(size, facts)}")


def _step_cost(size: int, facts: TemplateFacts) -> str:
    """The cost of a larger input than the template's, per training step (about size²): the
    same num_steps take that much longer; train.time_budget_minutes plans fewer of them."""
    if size <= facts.image_size:
        return ""
    return f" (a step costs ~{(size / facts.image_size) ** 2:.2f}x {facts.image_size} px's)"


def aspect_ratios_at_input(boxes: Boxes) -> np.ndarray:
    """Width / height of each bin as the model sees it (the frame is the resized square)."""
    return boxes.width / boxes.height


def same_area_iou(box_ratio: np.ndarray, anchor_ratio: float) -> np.ndarray:
    """IoU of a box and a concentric anchor of the same area, by their width/height ratios:
    the intersection is the area times s = sqrt(smaller ratio / larger), so IoU = s / (2 - s)."""
    s = np.sqrt(np.minimum(box_ratio / anchor_ratio, anchor_ratio / box_ratio))
    return s / (2.0 - s)


def ratios_fit(boxes: Boxes, ratios: tuple[float, ...]) -> dict[str, float]:
    """Per class: the share of boxes with a ratio in ``ratios`` that fits them (a same-area
    anchor overlapping with IoU >= RATIO_FIT_IOU)."""
    shapes = aspect_ratios_at_input(boxes)
    best = np.max([same_area_iou(shapes, ratio) for ratio in ratios], axis=0)
    fits = best >= RATIO_FIT_IOU
    return {label: float(boxes.count[(boxes.labels == label) & fits].sum()
                         / boxes.count[boxes.labels == label].sum())
            for label in boxes.classes()}


def fit_aspect_ratios(boxes: Boxes, count: int) -> tuple[float, ...]:
    """``count`` anchor aspect ratios (width / height): a weighted k-means of the boxes' log
    aspect ratios started at evenly spaced quantiles (deterministic); rounded, distinct,
    ascending."""
    logs, weights = np.log(aspect_ratios_at_input(boxes)), boxes.count.astype(float)
    order = np.argsort(logs)
    logs, weights = logs[order], weights[order]
    cumulative = np.cumsum(weights) / weights.sum()
    starts = np.searchsorted(cumulative, (np.arange(count) + 0.5) / count)
    centres = logs[np.minimum(starts, len(logs) - 1)]
    for _ in range(KMEANS_ITERATIONS):
        nearest = np.argmin(np.abs(logs[:, None] - centres[None, :]), axis=1)
        updated = np.array([np.average(logs[nearest == k], weights=weights[nearest == k])
                            if np.any(nearest == k) else centres[k] for k in range(count)])
        if np.allclose(updated, centres):
            break
        centres = updated
    return tuple(sorted({round(float(np.exp(c)), RATIO_DECIMALS) for c in centres}))


def small_box_px(boxes: Boxes, size: int) -> tuple[float, str]:
    """The smallest per-class (1 - KEPT_FRACTION) quantile of box size (sqrt of area, input
    pixels at ``size``) and its class: the small boxes the smallest anchor must match."""
    sides = size * np.sqrt(boxes.width * boxes.height)
    quantiles = {label: _weighted_quantile(sides[boxes.labels == label],
                                           boxes.count[boxes.labels == label], 1 - KEPT_FRACTION)
                 for label in boxes.classes()}
    label = min(quantiles, key=quantiles.get)
    return quantiles[label], label


def derive_anchor_factor(boxes: Boxes, size: int, facts: TemplateFacts) -> tuple[float, str]:
    """The factor on the template's anchor sizes: 1, or less when the small boxes of a class
    are below what the smallest anchor matches (IoU 0.5), never below MIN_ANCHOR_FACTOR."""
    smallest = facts.smallest_anchor_px(size)
    small, label = small_box_px(boxes, size)
    factor = min(1.0, max(MIN_ANCHOR_FACTOR, ANCHOR_MATCH_FACTOR * small / smallest))
    factor = round(factor, 2)
    if factor == 1.0:
        return 1.0, (f"anchors: the template's (smallest {smallest:.0f} px matches boxes down to "
                     f"{smallest / ANCHOR_MATCH_FACTOR:.0f} px; {_percent(KEPT_FRACTION)} of "
                     f"every class's boxes are >= {small:.0f} px)")
    return factor, (f"anchors x{factor:g}: smallest {smallest * factor:.0f} px matches boxes "
                    f"down to {smallest * factor / ANCHOR_MATCH_FACTOR:.0f} px (class "
                    f"{label!r}: {_percent(KEPT_FRACTION)} of its boxes >= {small:.0f} px)")


def steps_for_epochs(epochs: int, train_images: int, batch_size: int) -> int:
    """Training steps for ``epochs`` passes over ``train_images`` at ``batch_size``."""
    return max(1, math.ceil(epochs * train_images / batch_size))


def derive(report: dict, facts: TemplateFacts, model: ModelParams, train: TrainParams,
           fine_tuning: bool) -> Defaults:
    """Every value configure derives from ``report`` (the data report, ``{}`` when absent) for
    the template ``facts``; a pinned param wins over the derived value."""
    boxes = train_boxes(report, facts.keeps_aspect)
    size = _image_size(boxes, facts, model)
    return Defaults(size, _aspect_ratios(boxes, facts, model, fine_tuning),
                    _anchor_factor(boxes, facts, model, size.value, fine_tuning),
                    _max_boxes(report, facts, train), _num_steps(report, train))


def _image_size(boxes: Boxes | None, facts: TemplateFacts, model: ModelParams) -> Choice:
    size = pinned(model, "image_size")
    if size is not None:
        return Choice("image_size", size, PINNED, f"input {size} px: model.image_size")
    if boxes is None:
        return Choice("image_size", facts.image_size, TEMPLATE,
                      f"input {facts.image_size} px: the template's (no box shapes in the data "
                      "report)")
    return Choice("image_size", *_swap(derive_image_size(boxes, facts), DERIVED))


def _aspect_ratios(boxes: Boxes | None, facts: TemplateFacts, model: ModelParams,
                   fine_tuning: bool) -> Choice:
    ratios = pinned(model, "anchor_aspect_ratios")
    if ratios is not None:
        return Choice("anchor_aspect_ratios", tuple(ratios), PINNED,
                      f"anchor aspect ratios {_ratios(ratios)}: model.anchor_aspect_ratios")
    why = _template_anchors_why(boxes, fine_tuning)
    if why:
        return Choice("anchor_aspect_ratios", facts.aspect_ratios, TEMPLATE,
                      f"anchor aspect ratios {_ratios(facts.aspect_ratios)}: the template's ({why})")
    fit = ratios_fit(boxes, facts.aspect_ratios)
    worst = min(fit, key=fit.get)
    if fit[worst] >= KEPT_FRACTION:
        return Choice("anchor_aspect_ratios", facts.aspect_ratios, TEMPLATE,
                      f"anchor aspect ratios {_ratios(facts.aspect_ratios)}: the template's (they "
                      f"fit {_percent(fit[worst])} of every class's boxes)")
    ratios = fit_aspect_ratios(boxes, len(facts.aspect_ratios))
    return Choice("anchor_aspect_ratios", ratios, DERIVED,
                  f"anchor aspect ratios {_ratios(ratios)}: k-means of {boxes.total} train "
                  f"boxes' width/height at the model input (the template's fit only "
                  f"{_percent(fit[worst])} of class {worst!r}'s boxes)")


def _anchor_factor(boxes: Boxes | None, facts: TemplateFacts, model: ModelParams, size: int,
                   fine_tuning: bool) -> Choice:
    smallest = facts.smallest_anchor_px(size)
    wanted = pinned(model, "anchor_min_size")
    if wanted is not None:
        factor = round(wanted / smallest, 4)
        return Choice("anchor_factor", factor, PINNED,
                      f"anchors x{factor:g}: smallest {wanted} px (model.anchor_min_size)")
    why = _template_anchors_why(boxes, fine_tuning)
    if why:
        return Choice("anchor_factor", 1.0, TEMPLATE,
                      f"anchors: the template's, smallest {smallest:.0f} px ({why})")
    return Choice("anchor_factor", *_swap(derive_anchor_factor(boxes, size, facts), DERIVED))


def _template_anchors_why(boxes: Boxes | None, fine_tuning: bool) -> str:
    """Why the template's anchors are kept ('' when they are fitted to the data)."""
    if fine_tuning:
        return "fine-tuning: the pretrained box predictor was trained on them"
    return "" if boxes is not None else "no box shapes in the data report"


def _max_boxes(report: dict, facts: TemplateFacts, train: TrainParams) -> Choice:
    busiest = int(report.get("max_objects_per_image", 0))
    wanted = pinned(train, "max_boxes")
    if wanted is not None and wanted >= busiest:
        return Choice("max_boxes", wanted, PINNED, f"max_boxes {wanted}: train.max_boxes")
    if wanted is not None:  # the OD API would drop the extra boxes without a word
        return Choice("max_boxes", busiest, DERIVED,
                      f"max_boxes {busiest}: the busiest image (train.max_boxes {wanted} would "
                      "drop labelled boxes)")
    if busiest == 0:
        return Choice("max_boxes", facts.max_boxes, TEMPLATE,
                      f"max_boxes {facts.max_boxes}: the template's (no data report)")
    return Choice("max_boxes", busiest, DERIVED, f"max_boxes {busiest}: the busiest image")


def _num_steps(report: dict, train: TrainParams) -> Choice:
    images = int(report.get("splits", {}).get("train", {}).get("images", 0))
    steps = pinned(train, "num_steps")
    if steps is not None:
        epochs = f" ({steps * train.batch_size / images:.1f} epochs)" if images else ""
        return Choice("num_steps", steps, PINNED, f"num_steps {steps}: train.num_steps{epochs}")
    if not images:
        raise PipelineError("train.num_steps 0 derives the steps from the train images in the "
                            "data report, which has none: run the convert stage first, or set "
                            "train.num_steps")
    steps = steps_for_epochs(train.epochs, images, train.batch_size)
    return Choice("num_steps", steps, DERIVED,
                  f"num_steps {steps}: {train.epochs} epochs x {images} train images / batch "
                  f"{train.batch_size}")


def _weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order]) / weights.sum()
    return float(values[order][min(np.searchsorted(cumulative, q), len(values) - 1)])


def _swap(result: tuple[Any, str], source: str) -> tuple[Any, str, str]:
    value, reason = result
    return value, source, reason


def _percent(fraction: float) -> str:
    return f"{math.floor(fraction * 100)}%"


def _ratios(ratios: tuple[float, ...]) -> str:
    return ", ".join(f"{r:g}" for r in ratios)
