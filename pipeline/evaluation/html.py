"""One self-contained HTML page for the test-set report: tables plus every PNG embedded (base64),
so the single file can be mailed, attached to a ticket or opened from MLflow's artifact view."""
from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any, Sequence

from pipeline.evaluation.coco import SUMMARY_KEYS

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
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title>",
             f"<style>{_STYLE}</style></head><body><h1>{_e(title)}</h1>",
             _headline(metrics), "<h2>COCO summary (pycocotools)</h2>", _summary_table(metrics),
             "<h2>Per class</h2>", _per_class_table(metrics), _tflite_table(metrics),
             "<h2>Plots</h2>", *(_figure(p, p.stem.replace("_", " ")) for p in plots),
             "<h2>Ground truth (left) vs predictions (right): sample test images</h2>",
             *(_figure(p, c) for c, p in samples),
             "<h2>Worst test images (most errors at the confusion-matrix thresholds)</h2>",
             *(_figure(p, c) for c, p in worst), "</body></html>"]
    return "\n".join(parts)


def _headline(m: dict) -> str:
    cards = [("mAP @[.5:.95]", _f(m.get("map"))), ("mAP @.5 (COCO)", _f(m.get("map_50"))),
             ("mAP @.5 (Pascal VOC)", _f(m.get("pascal_voc_map_50"))),
             ("latency p50 / p95", f"{_f(m['latency_ms']['p50'], 1)} / "
                                   f"{_f(m['latency_ms']['p95'], 1)} ms"),
             ("throughput", f"{_f(m.get('images_per_second'), 1)} img/s"),
             ("test images", str(m.get("num_images")))]
    body = "".join(f"<div class='card'>{_e(k)}<b>{_e(v)}</b></div>" for k, v in cards)
    return f"<div class='cards'>{body}</div>"


def _summary_table(m: dict) -> str:
    rows = "".join(f"<tr><td>{_e(_SUMMARY_LABELS[k])}</td><td>{k}</td>"
                   f"<td class='n'>{_f(m.get(k))}</td></tr>" for k in SUMMARY_KEYS)
    return f"<table><tr><th>metric</th><th>key</th><th>value</th></tr>{rows}</table>"


def _per_class_table(m: dict) -> str:
    rows = "".join(f"<tr><td>{_e(n)}</td><td class='n'>{_f(s['ap'])}</td>"
                   f"<td class='n'>{_f(s['ap50'])}</td>"
                   f"<td class='n'>{_f(s.get('voc_ap50'))}</td></tr>"
                   for n, s in m["per_class"].items())
    return ("<table><tr><th>class</th><th>AP @[.5:.95]</th><th>AP @.5</th>"
            f"<th>VOC AP @.5</th></tr>{rows}</table>")


def _tflite_table(m: dict) -> str:
    tflite = m.get("tflite") or {}
    if not tflite:
        return ""
    rows = "".join(f"<tr><td>{_e(p)}</td><td class='n'>{_f(s.get('map'))}</td>"
                   f"<td class='n'>{_f(s.get('map_50'))}</td>"
                   f"<td class='n'>{_f(s['latency_ms']['p50'], 1)}</td></tr>"
                   for p, s in tflite.items())
    return ("<h2>TFLite models (same test split)</h2><table><tr><th>precision</th>"
            "<th>mAP</th><th>mAP @.5</th><th>latency p50 (ms)</th></tr>"
            f"<tr><td>SavedModel</td><td class='n'>{_f(m.get('map'))}</td>"
            f"<td class='n'>{_f(m.get('map_50'))}</td>"
            f"<td class='n'>{_f(m['latency_ms']['p50'], 1)}</td></tr>{rows}</table>")


def _figure(png: Path, caption: str) -> str:
    data = base64.b64encode(Path(png).read_bytes()).decode("ascii")
    return (f"<figure><img src='data:image/png;base64,{data}' alt='{_e(caption)}'>"
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _f(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)
