"""The HTML report page (Jinja2 template): content, and every value from the data escaped."""
from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.evaluation import html
from pipeline.evaluation.coco import SUMMARY_KEYS

SCRIPT = "<script>alert(1)</script>"


def _metrics(per_class: dict, **extra) -> dict:
    return {**{key: 0.5 for key in SUMMARY_KEYS}, "pascal_voc_map_50": 0.25,
            "per_class": per_class, "latency_ms": {"p50": 3.0, "p95": 4.5, "mean": 3.2},
            "images_per_second": None, "num_images": 7, **extra}


def _png(path: Path, width: int = 8, height: int = 6, seed: int = 0) -> Path:
    """A picture like a test image: smooth shading, a few boxes, sensor noise."""
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[0:height, 0:width]
    image = np.stack([rows * 200 // max(height, 1), columns * 200 // max(width, 1),
                      np.full_like(rows, 90)], axis=-1).astype(np.int16)
    for _ in range(6):
        top, left = rng.integers(0, height), rng.integers(0, width)
        image[top:top + height // 4, left:left + width // 4] = rng.integers(0, 255, 3)
    image += rng.integers(-6, 7, image.shape, dtype=np.int16)
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path)
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
    assert page.count("data:image/png;base64,") == 2  # the plots
    assert page.count("data:image/jpeg;base64,") == 1  # the picture
    assert "<figcaption>confusion matrix</figcaption>" in page
    assert "<td>circle</td>" + "<td class='n'>1.000</td>" * 2 + "<td class='n'>0.750</td>" in page
    assert "<td>AP @.75</td><td>map_75</td><td class='n'>0.500</td>" in page
    assert "<b>3.0 / 4.5 ms</b>" in page and "<b>n/a img/s</b>" in page
    assert "TFLite" not in page  # no TFLite models, no table
    assert "<table class='about'>" not in page and "Training (" not in page  # none given


def test_page_says_what_produced_it_and_shows_the_curves(tmp_path):
    about = [("git commit", "c0ffee-dirty"), ("dataset", f"{SCRIPT} md5 0123")]
    page = html.render(_metrics({}), [], [], [], about=about, curves=b"\x89PNG curves")
    assert "<tr><th>git commit</th><td>c0ffee-dirty</td></tr>" in page
    assert "<td>&lt;script&gt;alert(1)&lt;/script&gt; md5 0123</td>" in page
    assert base64.b64encode(b"\x89PNG curves").decode() in page


#: 20 pictures, each at most PHOTO_MAX_SIDE (640) px on its longest side as JPEG (quality 85):
#: about 17 KB for these (a 640 x 480 photo: 40-70 KB), x 4/3 for base64; 100 KB each leaves
#: headroom and is still 50 times less than the PNGs at full size (several MB each).
PAGE_BOUND = 20 * 100_000


def test_twenty_large_pictures_keep_the_page_under_two_megabytes(tmp_path):
    pictures = [(f"p{k}.jpg", _png(tmp_path / f"p{k}.png", 2400, 1800, seed=k))
                for k in range(20)]
    raw = sum(path.stat().st_size for _, path in pictures)
    page = html.render(_metrics({}), [], pictures[:10], pictures[10:])
    assert len(page.encode()) < PAGE_BOUND < raw / 10
    embedded = re.findall(r"data:image/jpeg;base64,([A-Za-z0-9+/=]+)", page)
    assert len(embedded) == 20
    sizes = {Image.open(io.BytesIO(base64.b64decode(data))).size for data in embedded}
    assert sizes == {(html.PHOTO_MAX_SIDE, html.PHOTO_MAX_SIDE * 3 // 4)}
