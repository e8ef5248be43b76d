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
