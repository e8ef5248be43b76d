"""pipeline.data.health: the Markdown data report, rendered from the package's Jinja2 template."""
from __future__ import annotations

import json
from importlib import resources

import pytest

from pipeline.data import health

from tests.paths import ROOT

GOLDEN = ROOT / "tests" / "data" / "golden"


@pytest.mark.parametrize("case", ["full", "clean"])
def test_markdown_report_is_the_same_as_before_the_template(case: str) -> None:
    """``data_report_*.md`` were written by the hand-built report_markdown this template
    replaced, from the reports in ``data_reports.json``: warnings, plots, two reasons, 57
    issues of one reason (50 listed, then '... and 7 more'); and a report with none of them."""
    reports = json.loads((GOLDEN / "data_reports.json").read_text())
    expected = (GOLDEN / f"data_report_{case}.md").read_text()
    assert health.report_markdown(reports[case]) == expected


def test_template_is_a_package_resource() -> None:
    """Loaded from the installed package (importlib.resources), not from the checkout."""
    template = resources.files("pipeline.data") / health.TEMPLATES_DIR / health.MARKDOWN_TEMPLATE
    assert template.is_file()
    assert "{{ root }}" in template.read_text(encoding="utf-8")


def test_box_shape_bins_are_eighth_octaves_of_the_image_fraction() -> None:
    assert health.box_shape_bin(0.5, 1.0) == "-8,0"
    assert health.box_shape_bin(0.0, 1e-9) == "-80,-80"  # clamped at 2**-10
    for fraction in (0.003, 0.02, 0.1, 0.37, 0.99):
        width, height = health.box_shape_center(health.box_shape_bin(fraction, fraction / 2))
        assert width == pytest.approx(fraction, rel=0.05)  # half a bin: 2**(1/16) - 1 = 4.4%
        assert height == pytest.approx(fraction / 2, rel=0.05)


def test_the_split_report_carries_the_box_shapes_sorted() -> None:
    summary = health.empty_summary()
    health.add_box_shapes(summary, [("dog", "-3,-4", "-3,-5"), ("cat", "-9,-9", "-9,-10"),
                                    ("dog", "-3,-4", "-3,-5")])
    report = health.split_report(3, summary, 1, [])
    assert report["box_shapes"] == {"cat": {"-9,-9": 1}, "dog": {"-3,-4": 2}}
    assert list(report["box_shapes_longer_side"]) == ["cat", "dog"]
