"""One self-contained HTML page for the test-set report: what produced it, tables, the training
curves, plots and pictures embedded (base64), so the single file can be mailed, attached to a
ticket or opened from MLflow's artifact view. Pictures of test images are scaled to at most
:data:`PHOTO_MAX_SIDE` pixels and JPEG-compressed, so the page stays small (at most about 70 KB
per picture) whatever the size of the test images.

The page is the Jinja2 template ``templates/report.html.j2`` of this package, rendered with
autoescaping: every value from the data (class names, file names in captions) is HTML-escaped.
"""
from __future__ import annotations

import base64
import io
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import jinja2

from pipeline.evaluation.coco import SUMMARY_KEYS

TEMPLATE = "report.html.j2"
#: Longest side of an embedded picture, pixels: the page's column is 1100 px wide and shows
#: pictures side by side; a ground truth | prediction pair stays readable at 640.
PHOTO_MAX_SIDE = 640
#: JPEG quality of embedded pictures: boxes and labels stay sharp, about 1/10 of the raw size.
PHOTO_JPEG_QUALITY = 85
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
           worst: Sequence[tuple[str, Path]], title: str = "Test-set report",
           about: Sequence[tuple[str, str]] = (), curves: bytes | None = None) -> str:
    """The HTML page; ``samples``/``worst`` are ``(caption, png)`` pairs, ``about`` the
    ``(label, value)`` rows saying what produced the report, ``curves`` the PNG of the training
    curves (none: no section)."""
    return _template().render(
        title=title, style=_STYLE, m=metrics, cards=_headline(metrics), about=about,
        summary=[(key, _SUMMARY_LABELS[key]) for key in SUMMARY_KEYS],
        curves=curves and _embedded(curves, "training curves", "image/png"),
        plots=[_figure(p, p.stem.replace("_", " ")) for p in plots],
        samples=[_photo(p, c) for c, p in samples], worst=[_photo(p, c) for c, p in worst])


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
    return _embedded(Path(png).read_bytes(), caption, "image/png")


def _photo(picture: Path, caption: str) -> dict[str, str]:
    """A picture scaled to :data:`PHOTO_MAX_SIDE` and embedded as JPEG."""
    from PIL import Image

    with Image.open(picture) as image:
        rgb = image.convert("RGB")
    rgb.thumbnail((PHOTO_MAX_SIDE, PHOTO_MAX_SIDE), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    rgb.save(buffer, "JPEG", quality=PHOTO_JPEG_QUALITY, optimize=True)
    return _embedded(buffer.getvalue(), caption, "image/jpeg")


def _embedded(data: bytes, caption: str, mime: str) -> dict[str, str]:
    return {"caption": caption, "mime": mime, "data": base64.b64encode(data).decode("ascii")}


def _number(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"
