"""`dvc plots show` on the project's dvc.yaml draws each plot once, with data and the intended
template and axes (never a CSV against its row numbers)."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.core import layout
from pipeline.evaluation import outputs
from pipeline.evaluation.confusion import ConfusionResult
from tests.paths import ROOT
from tests.stages.test_end_to_end import make_project, run

PLOTS_DIR = layout.REPORTS_DIR / layout.REPORT_PLOTS_DIR
PR_CSV = PLOTS_DIR / f"{layout.PR_CURVE}.csv"
CONFUSION_CSV = PLOTS_DIR / f"{layout.CONFUSION_MATRIX}.csv"
PR_TITLE = "Precision-recall at IoU 0.5 (test split)"
CONFUSION_TITLE = "Confusion matrix at IoU 0.5 (test split, report.score_threshold)"
#: the confusion matrix written below: circle 2x right, 1x as square; 1 square missed
CONFUSION = ConfusionResult(labels=["circle", "square", "background"],
                            matrix=np.array([[2, 1, 0], [0, 0, 1], [0, 1, 0]]),
                            errors_per_image={})


def with_plot_templates(project: Path) -> Path:
    """The project's own DVC plot templates (``.dvc/plots``), which `make_project` leaves out."""
    shutil.copytree(ROOT / ".dvc" / "plots", project / ".dvc" / "plots")
    return project


def top_level_plots() -> dict[str, dict]:
    """dvc.yaml's top-level ``plots``: title -> definition."""
    spec = yaml.safe_load((ROOT / layout.DVC_FILE).read_text())
    return {title: definition for entry in spec["plots"] for title, definition in entry.items()}


def write_fake_reports(project: Path) -> None:
    """A tiny reports/ folder: the report's plot CSVs from its own writers, the training curves
    with the columns dvc.yaml plots (three steps), placeholder pictures."""
    outputs.write_pr_csv(project / PR_CSV, {
        "circle": (np.array([0.0, 0.5, 1.0]), np.array([1.0, 0.8, 0.3])),
        "square": (np.array([0.0, 0.5, 1.0]), np.array([0.9, 0.4, 0.0]))})
    outputs.write_confusion_csv(project / CONFUSION_CSV, CONFUSION)
    columns: dict[str, set[str]] = {}
    for definition in top_level_plots().values():
        for name, fields in definition["y"].items():
            if name not in (str(PR_CSV), str(CONFUSION_CSV)):
                columns.setdefault(name, set()).update([fields] if isinstance(fields, str)
                                                       else fields)
    for name, fields in columns.items():
        with (project / name).open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["step", *sorted(fields)])
            writer.writerows([step, *[0.5 / step] * len(fields)] for step in (10, 20, 30))
    for stem in (layout.PR_CURVE, layout.CONFUSION_MATRIX):
        (project / PLOTS_DIR / f"{stem}.png").write_bytes(b"\x89PNG\r\n\x1a\n")


@pytest.fixture(scope="module")
def shown(tmp_path_factory) -> dict:
    """`dvc plots show --json` of the project's dvc.yaml on the fake reports."""
    project = with_plot_templates(make_project(tmp_path_factory.mktemp("plots") / "p", {}))
    write_fake_reports(project)
    return json.loads(run(["dvc", "plots", "show", "--json"], project).stdout)


def encoding(content: dict) -> dict:
    """The x/y/colour encoding of a vega spec (a faceted spec has it under ``spec``)."""
    return content.get("encoding") or content["spec"]["encoding"]


def test_plots_show_draws_the_top_level_plots_and_the_pictures_only(shown):
    assert "errors" not in shown
    assert sorted(shown["data"]) == sorted([*top_level_plots(),
                                            str(PLOTS_DIR / f"{layout.PR_CURVE}.png"),
                                            str(PLOTS_DIR / f"{layout.CONFUSION_MATRIX}.png")])


def test_every_vega_plot_has_data_and_a_column_of_its_csv_as_x(shown):
    for title, definition in top_level_plots().items():
        (plot,) = shown["data"][title]
        rows = plot["content"]["data"]["values"]
        assert rows, title
        x = encoding(plot["content"])["x"]["field"]
        assert x == definition["x"] and all(x in row for row in rows), title  # not a row index


def test_precision_recall_is_drawn_per_class_recall_against_precision(shown):
    (plot,) = shown["data"][PR_TITLE]
    axes = encoding(plot["content"])
    assert (axes["x"]["field"], axes["y"]["field"]) == ("recall", "precision")
    assert axes["color"]["field"] == "class"
    assert {row["class"] for row in plot["content"]["data"]["values"]} == {"circle", "square"}


def test_confusion_matrix_uses_dvcs_confusion_template_and_counts_the_pairs(shown):
    (plot,) = shown["data"][CONFUSION_TITLE]
    content = plot["content"]
    axes = encoding(content)
    assert (axes["x"]["field"], axes["y"]["field"]) == ("actual", "predicted")
    assert {"op": "count", "as": "xy_count"} in content["spec"]["transform"][0]["aggregate"]
    pairs = [(row["actual"], row["predicted"]) for row in content["data"]["values"]]
    for i, actual in enumerate(CONFUSION.labels):
        for j, predicted in enumerate(CONFUSION.labels):
            assert pairs.count((actual, predicted)) == CONFUSION.matrix[i, j]
