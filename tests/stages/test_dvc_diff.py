"""`dvc metrics diff` and `dvc plots diff` between two commits of a real project: the metrics
and plot data are committed with the product's .gitignore, the pictures come from DVC's cache.

Slow: one `dvc repro` of the miniature project without TFLite models, then a report-only
re-run: 476 s and 784 s measured on the shared, busy 2-core machine (all in the fixture;
each test ~2 s).
On the code before (reports/ git-ignored) every test here fails: no commit holds a metric.
"""
from __future__ import annotations

import json
import shutil

import pytest
import yaml

from pipeline.core import layout
from tests.paths import ROOT
from tests.stages.test_dvc_plots import PLOTS_DIR, top_level_plots, with_plot_templates
from tests.stages.test_end_to_end import GIT_IDENTITY, MINI_PARAMS, make_project, run

pytestmark = pytest.mark.slow

#: the miniature project, with only what the report needs (no TFLite, few pictures)
PARAMS = {**MINI_PARAMS, "export": {"tflite": []},
          "report": {"sample_images": 1, "worst_images": 1, "score_threshold": 0.5}}
METRICS = str(layout.REPORTS_DIR / layout.METRICS_FILE)
PICTURES = [str(PLOTS_DIR / f"{stem}.png") for stem in (layout.PR_CURVE, layout.CONFUSION_MATRIX)]


def commit(project, message: str) -> None:
    run(["git", "add", "-A"], project)
    run(["git", *GIT_IDENTITY, "commit", "-qm", message], project)


@pytest.fixture(scope="module")
def two_commits(tmp_path_factory):
    """The project committed after `dvc repro`, then again after a report param changed."""
    project = with_plot_templates(make_project(tmp_path_factory.mktemp("diff") / "p", PARAMS))
    shutil.copy(ROOT / ".gitignore", project)  # the product's: what a user's commits hold
    run(["git", "init", "-q"], project)
    run(["dvc", "config", "core.no_scm", "false"], project)
    run(["dvc", "repro"], project)
    commit(project, "baseline")
    params = yaml.safe_load((project / layout.PARAMS_FILE).read_text())
    params["report"]["score_threshold"] = 0.3
    (project / layout.PARAMS_FILE).write_text(yaml.safe_dump(params))
    run(["dvc", "repro"], project)
    commit(project, "score threshold 0.3")
    return project


def test_metrics_and_plot_data_are_committed_and_large_pictures_are_not(two_commits):
    committed = set(run(["git", "ls-files", str(layout.REPORTS_DIR)], two_commits).stdout.split())
    assert {METRICS, str(layout.EVAL_METRICS), str(layout.TRAIN_CURVES),
            str(PLOTS_DIR / f"{layout.PR_CURVE}.csv"),
            str(PLOTS_DIR / f"{layout.CONFUSION_MATRIX}.csv")} <= committed
    assert str(layout.REPORTS_DIR / layout.REPORT_HTML) not in committed
    assert not set(PICTURES) & committed


def test_metrics_diff_between_two_commits_shows_the_changed_values(two_commits):
    diff = json.loads(run(["dvc", "metrics", "diff", "HEAD~1", "HEAD", "--json"],
                          two_commits).stdout)
    changed = diff[METRICS]["confusion.score_threshold"]
    assert (changed["old"], changed["new"]) == (0.5, 0.3)


def test_plots_diff_between_two_commits_draws_both_revisions(two_commits):
    shown = json.loads(run(["dvc", "plots", "diff", "HEAD~1", "HEAD", "--json"],
                           two_commits).stdout)
    assert "errors" not in shown
    for title in top_level_plots():
        (plot,) = shown["data"][title]
        assert {row["rev"] for row in plot["content"]["data"]["values"]} == {"HEAD~1", "HEAD"}
    for picture in PICTURES:  # from DVC's cache, one per revision
        assert sorted(rev for entry in shown["data"][picture]
                      for rev in entry["revisions"]) == ["HEAD", "HEAD~1"]
