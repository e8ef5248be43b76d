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
from pathlib import Path

import pytest

from pipeline.core.errors import PipelineError
from pipeline.core.params import params_from_dict
from pipeline.stages import compare

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
    assert (queued["mAP"], queued["mAP@.5"]) == ("-", "-")


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
