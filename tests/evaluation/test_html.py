"""The HTML report page (Jinja2 template): content, and every value from the data escaped."""
from __future__ import annotations

from pathlib import Path

from pipeline.evaluation import html
from pipeline.evaluation.coco import SUMMARY_KEYS

SCRIPT = "<script>alert(1)</script>"


def _metrics(per_class: dict, **extra) -> dict:
    return {**{key: 0.5 for key in SUMMARY_KEYS}, "pascal_voc_map_50": 0.25,
            "per_class": per_class, "latency_ms": {"p50": 3.0, "p95": 4.5, "mean": 3.2},
            "images_per_second": None, "num_images": 7, **extra}


def _png(path: Path) -> Path:
    path.write_bytes(b"\x89PNG not really")
    return path


def test_class_and_file_names_are_escaped(tmp_path):
    per_class = {SCRIPT: {"ap": 0.1, "ap50": 0.2, "voc_ap50": None}}
    tflite = {SCRIPT: {"map": 0.3, "map_50": 0.4, "latency_ms": {"p50": 1.0}}}
    page = html.render(_metrics(per_class, tflite=tflite), [_png(tmp_path / "pr_curve.png")],
                       [(f"{SCRIPT}.jpg: 0 error(s)", _png(tmp_path / "s.png"))],
                       [("'x' onerror='alert(1).jpg: 2 error(s)", _png(tmp_path / "w.png"))])
    assert "<script" not in page.lower()
    assert "onerror='" not in page  # a caption cannot close the alt attribute
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert f"<td>{escaped}</td><td class='n'>0.100</td>" in page  # the per-class row
    assert f"<td>{escaped}</td><td class='n'>0.300</td>" in page  # the TFLite row
    assert f"<figcaption>{escaped}.jpg: 0 error(s)</figcaption>" in page


def test_page_has_every_section_figure_and_number(tmp_path):
    per_class = {"circle": {"ap": 1.0, "ap50": 1.0, "voc_ap50": 0.75}}
    plots = [_png(tmp_path / "pr_curve.png"), _png(tmp_path / "confusion_matrix.png")]
    page = html.render(_metrics(per_class), plots, [("a.jpg: 0 error(s)", plots[0])], [])
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</body></html>")
    assert page.count("data:image/png;base64,") == 3
    assert "<figcaption>confusion matrix</figcaption>" in page
    assert "<td>circle</td>" + "<td class='n'>1.000</td>" * 2 + "<td class='n'>0.750</td>" in page
    assert "<td>AP @.75</td><td>map_75</td><td class='n'>0.500</td>" in page
    assert "<b>3.0 / 4.5 ms</b>" in page and "<b>n/a img/s</b>" in page
    assert "TFLite" not in page  # no TFLite models, no table
