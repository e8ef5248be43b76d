"""benchmarks/workers.py: paired rounds summarised by their medians; the sample stage of the
benchmarks runs with a data.root every stage accepts before the sample exists."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.paths import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/workers.py")


def _side(rate: float, load: float = 1.0) -> dict:
    return {"images_per_second": rate, "wall_seconds": 100.0 / rate, "load_before": load,
            "load_after": load}


def test_summary_is_the_median_of_paired_ratios(bench) -> None:
    rounds = [{"1": _side(20), "2": _side(10), "ratio": 0.5},
              {"1": _side(30), "2": _side(24), "ratio": 0.8},
              {"1": _side(25, 2.5), "2": _side(15), "ratio": 0.6}]
    args = bench.parse_args(["--rounds", "3"])
    summary = bench.summarize(rounds, args)
    assert summary["ratio_two_over_one"] == 0.6 and summary["ratio_range"] == [0.5, 0.8]
    assert summary["1_worker"]["images_per_second"] == 25
    assert summary["2_worker"]["images_per_second"] == 15
    assert summary["max_load"] == 2.5


def test_odd_global_batch_is_refused(bench) -> None:
    with pytest.raises(SystemExit):
        bench.parse_args(["--batch-size", "5"])


def test_sample_stage_runs_with_the_default_data_root(bench, tmp_path: Path, monkeypatch) -> None:
    models = bench.models
    calls = []
    monkeypatch.setattr(models, "sh", lambda cmd, cwd=None: calls.append(cmd))
    params = models.write_params(tmp_path / "params.yaml", tmp_path, "ssd_mobilenet_v2_320", 4, 10)
    models.run_sample(params, tmp_path / "sample")
    (cmd,) = calls
    used = yaml.safe_load(Path(cmd[cmd.index("--params") + 1]).read_text())
    assert used["data"]["root"] == "data/sample"  # the project's own sample folder
    assert cmd[cmd.index("--output") + 1] == str(tmp_path / "sample")
    assert yaml.safe_load(params.read_text())["data"]["root"] == str(tmp_path / "sample")
