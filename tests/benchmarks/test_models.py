"""benchmarks/models.py's stage-vs-bare comparison: its bare side really is the OD API's own
loop (none of the stage's training hooks left around it), and its rates count the right blocks."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.paths import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/models.py")


@pytest.fixture
def model_lib_v2(bench):
    """The OD API's training module; the functions the test replaces are put back after it."""
    from pipeline.core import compat

    compat.apply()
    from object_detection import model_lib_v2 as module

    saved = bench.od_api_training_functions(module)
    yield module
    bench.restore_training_functions(module, saved)


def test_the_bare_side_runs_the_od_api_functions_without_the_stage_wrappers(bench,
                                                                             model_lib_v2):
    from pipeline.odapi import training_hooks

    training_hooks.save_final_checkpoint_after_train_loop()
    training_hooks.observe_train_steps(lambda step, loss: None)
    training_hooks.without_autotune_model_thread(model_lib_v2.inputs)
    wrapped = bench.od_api_training_functions(model_lib_v2)
    originals = {name: training_hooks.od_api_original(f) for name, f in wrapped.items()}

    for name, function in originals.items():
        assert function is not wrapped[name], name
        assert not hasattr(function, "od_api_original"), name
        assert Path(function.__code__.co_filename).parent.name == "object_detection", name
    bench.restore_training_functions(model_lib_v2, originals)
    assert bench.od_api_training_functions(model_lib_v2) == originals


def write_steps_per_sec(event_dir: Path, points: list[tuple[int, float]]) -> None:
    import tensorflow as tf

    writer = tf.summary.create_file_writer(str(event_dir))
    with writer.as_default():
        for step, rate in points:
            tf.summary.scalar("steps_per_sec", rate, step=step)
    writer.close()


def test_steady_rate_leaves_out_the_blocks_that_start_before_the_warm_up_ends(bench, tmp_path):
    # Blocks of 10 steps; the first block (tracing) is slow, later ones alternate 2 and 4 steps/s.
    points = [(10, 0.1)] + [(step, 2.0 if step % 20 else 4.0) for step in range(20, 110, 10)]
    write_steps_per_sec(tmp_path, points)
    kept = [(step, rate) for step, rate in points if step - 10 >= 30]
    expected = 4 * 10 * len(kept) / sum(10 / rate for _, rate in kept)

    assert bench.steady_rate(tmp_path, warmup_steps=30, batch_size=4) == round(expected, 2)
    assert bench.steady_rate(tmp_path, warmup_steps=0, batch_size=4) < expected


def test_the_goal_figure_is_the_median_of_the_paired_ratios(bench):
    def round_(stage: float, bare: float) -> dict:
        return {"stage": {"images_per_second": stage, "wall_seconds": 50.0},
                "bare": {"images_per_second": bare, "wall_seconds": 60.0},
                "ratio": round(stage / bare, 3)}

    # The per-side medians (36 vs 36) would hide that every pair but one has the stage slower.
    rounds = [round_(30.0, 32.0), round_(36.0, 40.0), round_(38.0, 36.0)]
    args = SimpleNamespace(compare_batch_size=4, compare_steps=300, warmup_steps=100)
    figures = bench.summarize_rounds(rounds, "m", args)

    assert figures["ratio"] == round(30.0 / 32.0, 3)
    assert figures["ratio_range"] == [round(36.0 / 40.0, 3), round(38.0 / 36.0, 3)]
    assert figures["stage_images_per_second"] == 36.0
    assert figures["bare_images_per_second"] == 36.0
