"""`python -m pipeline compare`: one line per experiment of `dvc exp show --json`.

The fixture is the real `dvc exp show --json` of the miniature project (tests/stages/
test_end_to_end.py's MINI_PARAMS) after `dvc repro` (12 steps, lr 0.02) on `master`, the
experiment `dvc exp run -n short-lr -S train.num_steps=8 -S train.learning_rate=0.01
-S 'export.tflite=[]'` (applied to the workspace) and `dvc exp run --queue -n other-model
-S model.name=ssd_mobilenet_v2_320` (queued, not run).
"""
import argparse
import io
import json
import shlex
from pathlib import Path

import pytest
import yaml

from pipeline.core import layout
from pipeline.core.errors import PipelineError
from pipeline.core.params import params_from_dict
from pipeline.stages import compare
from tests.paths import ROOT
from tests.stages.test_end_to_end import GIT_IDENTITY, make_project, run

FIXTURE = Path(__file__).parent / "fixtures" / "exp_show.json"


def table_rows() -> dict[str, dict[str, str]]:
    """The rows of the fixture's table: experiment -> {column title: cell}."""
    rows = compare.experiment_rows(json.loads(FIXTURE.read_text()))
    titles = [column.title for column in compare.COLUMNS]
    return {row[0].strip(): dict(zip(titles, row[1:])) for row in rows}


def test_one_row_per_revision_and_experiment_in_dvcs_order():
    assert list(table_rows()) == ["workspace", "master", "short-lr", "other-model (queued)"]


def test_rows_hold_the_key_params_and_the_test_metrics():
    rows = table_rows()
    assert rows["master"] == {"model": "ssd_mobilenet_v2_fpnlite_cpu", "steps": "12",
                              "batch": "4", "lr": "0.02", "mAP": "0.000", "mAP@.5": "0.000",
                              "data": "data/sample"}
    assert (rows["short-lr"]["steps"], rows["short-lr"]["lr"]) == ("8", "0.01")
    assert rows["other-model (queued)"]["model"] == "ssd_mobilenet_v2_320"


def test_an_experiment_without_results_shows_dashes_not_zeros():
    queued = table_rows()["other-model (queued)"]
    assert (queued["mAP"], queued["mAP@.5"], queued["steps"]) == ("-", "-", "-")


def test_steps_are_the_steps_trained_not_the_param():
    # num_steps 0 (derived from train.epochs), or a time budget: the param says nothing.
    shown = json.loads(FIXTURE.read_text())
    data = shown[1]["data"]
    data["params"]["params.yaml"]["data"]["train"]["num_steps"] = 0
    data["metrics"]["reports/eval_metrics.json"]["data"]["final_step"] = 736
    master = next(row for row in compare.experiment_rows(shown) if row[0] == "master")
    assert master[1 + [c.title for c in compare.COLUMNS].index("steps")] == "736"


def test_metrics_come_from_the_test_report_not_the_val_metrics():
    shown = json.loads(FIXTURE.read_text())
    metrics = shown[1]["data"]["metrics"]
    metrics[compare.METRICS_FILE]["data"]["map_50"] = 0.4567
    metrics["reports/eval_metrics.json"]["data"]["map_50"] = 0.9
    master = next(row for row in compare.experiment_rows(shown) if row[0] == "master")
    assert master[1 + [c.title for c in compare.COLUMNS].index("mAP@.5")] == "0.457"


def test_the_table_prints_one_line_per_experiment_under_a_header(capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(FIXTURE.read_text()))
    compare.run(argparse.Namespace(input=Path("-"), all_commits=False), params_from_dict({}))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["experiment", *(c.title for c in compare.COLUMNS)]
    assert [line.split()[0] for line in lines[1:]] == ["workspace", "master", "short-lr",
                                                      "other-model"]
    starts = {lines[0].index(title) for title in ("model", "steps", "mAP@.5")}
    for line in lines[1:]:  # aligned: every value starts under its title
        assert all(line[start - 1] == " " and line[start] != " " for start in starts)


@pytest.mark.parametrize("text, message", [
    ("not json", "is not the JSON of `dvc exp show --json`"),
    ('{"workspace": {}}', "expected a list of revisions"),
])
def test_input_that_is_not_dvc_exp_show_json_is_a_one_line_error(tmp_path, text, message):
    saved = tmp_path / "shown.json"
    saved.write_text(text)
    with pytest.raises(PipelineError, match=message):
        compare.read_exp_show(saved)


def test_a_missing_input_file_is_a_one_line_error(tmp_path):
    with pytest.raises(PipelineError, match="cannot read .*nowhere.json"):
        compare.read_exp_show(tmp_path / "nowhere.json")


def test_outside_a_dvc_project_dvcs_own_reason_is_reported(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PipelineError, match="`dvc exp show --json` failed: .*"):
        compare.read_exp_show(None)


# --- the documented `dvc exp show` forms (docs/training.md, Experiments) -----------------------

def documented_exp_show_commands() -> list[list[str]]:
    lines = (ROOT / "docs" / "training.md").read_text().splitlines()
    return [shlex.split(line) for line in lines if line.startswith("dvc exp show ")]


@pytest.fixture(scope="module")
def two_revisions(tmp_path_factory) -> Path:
    """A project whose commit holds the fixture's report metrics, and a workspace where the
    learning rate, the steps, the test mAP and the latency changed (nothing is run)."""
    project = make_project(tmp_path_factory.mktemp("exp") / "p", {})
    run(["git", "init", "-q"], project)
    run(["dvc", "config", "core.no_scm", "false"], project)
    metrics = json.loads(FIXTURE.read_text())[1]["data"]["metrics"]
    for name, content in metrics.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(json.dumps(content["data"]))
    run(["git", "add", "-A"], project)
    run(["git", *GIT_IDENTITY, "commit", "-qm", "baseline"], project)
    params = yaml.safe_load((project / layout.PARAMS_FILE).read_text())
    params["train"].update(learning_rate=0.01, num_steps=8)
    (project / layout.PARAMS_FILE).write_text(yaml.safe_dump(params))
    test_metrics = metrics[compare.METRICS_FILE]["data"]
    test_metrics["map"], test_metrics["latency_ms"]["p50"] = 0.25, 99.0
    (project / compare.METRICS_FILE).write_text(json.dumps(test_metrics))
    return project


def markdown_header(output: str) -> list[str]:
    return [cell.strip() for cell in output.splitlines()[0].strip("|").split("|")]


def test_the_docs_show_two_curated_dvc_exp_show_forms():
    assert len(documented_exp_show_commands()) == 2


def test_the_curated_form_shows_exactly_the_key_params_and_test_metrics(two_revisions):
    keep = documented_exp_show_commands()[0]
    header = markdown_header(run(keep, two_revisions).stdout)
    assert sorted(header) == sorted(["Experiment", "map", "map_50", "data.root", "model.name",
                                     "train.batch_size", "train.learning_rate",
                                     "train.num_steps"])


def test_the_only_changed_form_shows_what_differs_without_the_noise(two_revisions):
    only_changed = documented_exp_show_commands()[1]
    header = markdown_header(run(only_changed, two_revisions).stdout)
    assert sorted(header) == ["Experiment", "map", "train.learning_rate", "train.num_steps"]
