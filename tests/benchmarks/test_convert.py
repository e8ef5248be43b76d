"""benchmarks/convert.py's rules: a median of paired rounds, refused when the machine was busy."""
from __future__ import annotations

import pytest

from tests.paths import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/convert.py")


def _round(ours: float, theirs: float, load: float) -> dict:
    run = {"cpu_seconds": 1.0, "peak_mb": 100.0, "driver_peak_mb": 50.0,
           "load_before": load, "load_after": load}
    return {"ours": {**run, "seconds": ours}, "theirs": {**run, "seconds": theirs}}


def test_median_of_paired_ratios_and_refusal_when_busy(bench, monkeypatch) -> None:
    monkeypatch.setattr(bench.os, "cpu_count", lambda: 2)
    rounds = [_round(10, 20, 1.0), _round(10, 30, 1.5), _round(10, 15, 0.5)]
    quiet = bench.summarise(rounds, 1000, 0, {"ours": 1000, "theirs": 1000})
    assert quiet["ratios"] == [2.0, 3.0, 1.5] and quiet["median_ratio"] == 2.0
    assert quiet["ours_median_images_per_second"] == 100.0
    busy = bench.summarise([*rounds[:2], _round(10, 15, 2.5)], 1000, 0, {})
    assert busy["median_ratio"] is None and busy["load_average_max"] == 2.5
    # One CPU-bound process started on purpose: a load up to 3 on 2 cores is expected.
    assert bench.summarise([*rounds[:2], _round(10, 15, 2.5)], 1000, 1, {})["median_ratio"] == 2.0
