"""benchmarks/teardown.py: both sides summarised by the median wait; a side run in this process
consumes its distributed input and returns; bad options are refused."""
from __future__ import annotations

import pytest

from tests.paths import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/teardown.py")


def test_summary_is_the_median_and_range_per_side(bench) -> None:
    runs = [{"side": "plain", "teardown_s": wait} for wait in (33.1, 0.1, 7.0)]
    runs += [{"side": "hooked", "teardown_s": wait} for wait in (0.2, 0.1, 0.3)]
    summary = bench.summarise(runs)
    assert summary["plain"] == {"median_s": 7.0, "min_s": 0.1, "max_s": 33.1, "runs": 3}
    assert summary["hooked"]["median_s"] == 0.2


@pytest.mark.parametrize("argv", [["--rounds", "0"], ["--seconds", "0"]])
def test_bad_options_are_refused(bench, argv) -> None:
    with pytest.raises(SystemExit):
        bench.parse_args(argv)


def test_a_hooked_side_consumes_its_input_and_returns(bench, monkeypatch) -> None:
    from tensorflow.python.data.ops import multi_device_iterator_ops

    # Registered first, so that the hook's assignment is undone after the test.
    monkeypatch.setattr(multi_device_iterator_ops, "_create_device_dataset",
                        multi_device_iterator_ops._create_device_dataset)
    result = bench.consume_then_return(0.5, hooked=True)
    assert result["batches"] > 0 and result["teardown_s"] < 30
    assert getattr(multi_device_iterator_ops._create_device_dataset, "_without_autotune", False)
