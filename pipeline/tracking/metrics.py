"""Training scalars as MLflow metrics: readable names, and no sentinel values.

The OD API's evaluation writes pycocotools' summary under names such as
``DetectionBoxes_Precision/mAP@.50IOU`` or ``DetectionBoxes_Recall/AR@100 (small)``, and -1.0
where a bucket is empty (no small objects in the val split): -1 is not a score, and charting it
as one misleads, so such points are left out. The names follow the report's test metrics
(``map``, ``map_50``, ``mar_small``, ...; :data:`pipeline.evaluation.coco.SUMMARY_KEYS`), so
``eval/map_50`` during training compares with ``test.map_50`` after it.
"""
from __future__ import annotations

import re

from pipeline.tracking.journal import metric_name

#: ``DetectionBoxes_Precision/mAP@.50IOU`` -> map, 50; ``DetectionBoxes_Recall/AR@100 (small)``
#: -> mar, 100, small
_COCO = re.compile(r"DetectionBoxes_(?:Precision/mAP|Recall/AR)(?:@\.?(\d+)(?:IOU)?)?"
                   r"(?: \((\w+)\))?")


def readable_name(tag: str) -> str:
    """The MLflow name of a TF event scalar: ``map_50``, ``mar_small``, ``loss/total``, ...;
    other tags keep their name (with the characters MLflow refuses replaced)."""
    coco = _COCO.fullmatch(tag)
    if coco:
        base = "map" if "Precision" in tag else "mar"
        number, size = coco.groups()
        return f"{base}_{size}" if size else f"{base}_{number}" if number else base
    loss = re.fullmatch(r"Loss/(\w+?)(?:_loss)?", tag)
    return f"loss/{loss.group(1)}" if loss else metric_name(tag)


def is_sentinel(tag: str, value: float) -> bool:
    """Whether ``value`` marks a missing number rather than measures one: pycocotools' -1
    for an empty bucket (its precisions and recalls are otherwise in [0, 1])."""
    return _COCO.fullmatch(tag) is not None and value < 0


def tracked_points(kind: str, curves: dict[str, list[tuple[int, float]]]
                   ) -> list[tuple[str, int, float]]:
    """``(name, step, value)`` of every scalar of ``curves`` (tag -> points) worth charting,
    named ``<kind>/<readable name>``."""
    return [(f"{kind}/{readable_name(tag)}", step, value)
            for tag, series in curves.items() for step, value in series
            if not is_sentinel(tag, value)]
