"""One self-contained HTML page for the test-set report: tables plus every PNG embedded (base64),
so the single file can be mailed, attached to a ticket or opened from MLflow's artifact view.

The page is the Jinja2 template ``templates/report.html.j2`` of this package, rendered with
autoescaping: every value from the data (class names, file names in captions) is HTML-escaped.
"""
from __future__ import annotations

import base64
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import jinja2

from pipeline.evaluation.coco import SUMMARY_KEYS

TEMPLATE = "report.html.j2"
_SUMMARY_LABELS = {
    "map": "AP @[.5:.95]", "map_50": "AP @.5", "map_75": "AP @.75", "map_small": "AP small",
    "map_medium": "AP medium", "map_large": "AP large", "mar_1": "AR maxDets 1",
    "mar_10": "AR maxDets 10", "mar_100": "AR maxDets 100", "mar_small": "AR small",
    "mar_medium": "AR medium", "mar_large": "AR large",
}
_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ccc;padding:.25em .7em}
th{background:#f3f3f3} td.n{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:flex;flex-wrap:wrap;gap:.8em}
.card{border:1px solid #ddd;border-radius:6px;padding:.6em 1em;min-width:8em}
.card b{display:block;font-size:1.6em} figure{display:inline-block;margin:.4em}
figcaption{font-size:.85em;color:#555} img{max-width:100%}
"""


def render(metrics: dict[str, Any], plots: Sequence[Path], samples: Sequence[tuple[str, Path]],
           worst: Sequence[tuple[str, Path]], title: str = "Test-set report") -> str:
    """The HTML page; ``samples``/``worst`` are ``(caption, png)`` pairs."""
    return _template().render(
        title=title, style=_STYLE, m=metrics, cards=_headline(metrics),
        summary=[(key, _SUMMARY_LABELS[key]) for key in SUMMARY_KEYS],
        plots=[_figure(p, p.stem.replace("_", " ")) for p in plots],
        samples=[_figure(p, c) for c, p in samples], worst=[_figure(p, c) for c, p in worst])


@lru_cache(maxsize=1)
def _template() -> jinja2.Template:
    # Autoescape on whatever the file's extension: the page shows class and file names.
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("pipeline.evaluation", "templates"), autoescape=True,
        trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    environment.filters["num"] = _number
    return environment.get_template(TEMPLATE)


def _headline(m: dict) -> list[tuple[str, str]]:
    return [("mAP @[.5:.95]", _number(m.get("map"))), ("mAP @.5 (COCO)", _number(m.get("map_50"))),
            ("mAP @.5 (Pascal VOC)", _number(m.get("pascal_voc_map_50"))),
            ("latency p50 / p95", f"{_number(m['latency_ms']['p50'], 1)} / "
                                  f"{_number(m['latency_ms']['p95'], 1)} ms"),
            ("throughput", f"{_number(m.get('images_per_second'), 1)} img/s"),
            ("test images", str(m.get("num_images")))]


def _figure(png: Path, caption: str) -> dict[str, str]:
    return {"caption": caption, "data": base64.b64encode(Path(png).read_bytes()).decode("ascii")}


def _number(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"
