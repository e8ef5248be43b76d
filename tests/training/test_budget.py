"""The time budget's arithmetic and files (pipeline/training/budget.py): the steps that fit,
the timing of the measuring segment, the copy of the config with the planned schedule."""
import pytest

from pipeline.core import compat, layout
from pipeline.training import budget, inputs, loop

PLAIN = budget.Timing(seconds_per_step=0.5, restart_seconds=10.0)


def test_by_hand_two_segments_one_evaluation_fill_the_time_left():
    # 30 -> 100 (pause, evaluation 5 s) -> 180: 2 x 10 s start-up + 150 steps x 0.5 s + 5 s
    # = 100 s exactly; one step more does not fit.
    assert budget.planned_steps(100.0, 30, PLAIN, 5.0, 100) == 180
    assert budget.seconds_needed(30, 180, PLAIN, 5.0, 100) == 100.0
    assert budget.evaluations_between(30, 180, 100) == 1


@pytest.mark.parametrize("seconds_left", [-5.0, 0.0, 10.0, 10.4])
def test_no_time_for_a_start_up_and_a_step_plans_no_more_steps(seconds_left):
    assert budget.planned_steps(seconds_left, 30, PLAIN, 5.0, 100) == 30


def seconds_by_segments(start, end, timing, evaluation, eval_every_n):
    """The cost of training from start to end, counted on the loop's own segments."""
    segments = loop.segment_ends(start, end, eval_every_n)
    pending = 1 if eval_every_n and start and start % eval_every_n == 0 else 0
    return (len(segments) * timing.restart_seconds + (end - start) * timing.seconds_per_step
            + (len(segments) - 1 + pending) * evaluation)


@pytest.mark.parametrize("seconds_left, start, per_step, restart, evaluation, every", [
    (420.0, 30, 0.47, 17.0, 11.0, 400),
    (420.0, 30, 0.47, 17.0, 11.0, 0),
    (95.0, 30, 0.05, 20.0, 15.0, 100),
    (300.0, 40, 0.2, 3.0, 40.0, 20),  # the start is an evaluation step: it is counted
    (60.0, 30, 1.5, 30.0, 0.0, 10),
])
def test_the_plan_is_the_longest_training_the_loops_segments_fit(
        seconds_left, start, per_step, restart, evaluation, every):
    timing = budget.Timing(per_step, restart)
    fits = [end for end in range(start, start + 5000)
            if seconds_by_segments(start, end, timing, evaluation, every) <= seconds_left]
    planned = budget.planned_steps(seconds_left, start, timing, evaluation, every)
    assert planned == max(fits)
    assert budget.seconds_needed(start, planned, timing, evaluation, every) == pytest.approx(
        seconds_by_segments(start, planned, timing, evaluation, every))


def test_step_time_is_measured_after_the_first_block_the_rest_is_start_up():
    # A segment from step 0 started at t=1000 s and returned at t=1032 s; its step summaries
    # every 10 steps: the first block holds the tracing. Older runs' summaries do not count.
    points = [(10, 1020.0), (20, 1025.0), (30, 1030.0), (20, 900.0), (40, 990.0)]
    timing = budget.measured_timing(points, 0, 30, 1000.0, 1032.0)
    assert timing.seconds_per_step == pytest.approx(0.5)
    assert timing.restart_seconds == pytest.approx(32.0 - 30 * 0.5)
    cautious = budget.measured_timing([(30, 1030.0)], 0, 30, 1000.0, 1032.0)
    assert cautious.seconds_per_step == pytest.approx(32.0 / 30)  # one summary: all time
    assert cautious.restart_seconds == pytest.approx(0.0, abs=1e-9)  # counts as steps


def test_an_evaluation_costs_a_start_up_and_a_forward_pass_per_val_image():
    assert budget.evaluation_seconds(PLAIN, 64, 16) == 10.0 + 4 * 0.5


def test_step_wall_times_come_from_the_step_summaries_of_the_event_files(tmp_path):
    compat.apply()
    import tensorflow as tf

    writer = tf.summary.create_file_writer(str(tmp_path))
    with writer.as_default():
        for step in (10, 20):
            tf.summary.scalar(budget.STEP_SUMMARY, 3.0, step=step)
            tf.summary.scalar("Loss/total_loss", 1.0, step=step)
    writer.flush()
    points = budget.step_wall_times(tmp_path)
    assert [step for step, _ in points] == [10, 20]
    assert all(wall > 1.7e9 for _, wall in points)  # seconds since the epoch


CONFIG = """model { ssd { num_classes: 1 } }
train_config { batch_size: 3 num_steps: 800 optimizer { momentum_optimizer { learning_rate {
  cosine_decay_learning_rate { learning_rate_base: 0.04 total_steps: 800 warmup_steps: 80
  warmup_learning_rate: 0.004 } } } } }
"""


def test_the_copy_ends_its_schedule_at_the_planned_step_and_the_source_is_untouched(tmp_path):
    compat.apply()
    from object_detection.utils import config_util

    source, copy = tmp_path / "pipeline.config", tmp_path / "train" / "copy.config"
    source.write_text(CONFIG)
    copy.parent.mkdir()
    budget.write_schedule(source, copy, 333)
    assert source.read_text() == CONFIG
    train_config = config_util.get_configs_from_pipeline_file(str(copy))["train_config"]
    cosine = train_config.optimizer.momentum_optimizer.learning_rate.cosine_decay_learning_rate
    assert (train_config.num_steps, cosine.total_steps, cosine.warmup_steps) == (333, 333, 80)
    assert inputs.read_schedule(copy) == inputs.Schedule(333, 3, pytest.approx(0.04))
    budget.write_schedule(source, copy, 50)  # a warmup longer than the plan ends before it
    cosine = config_util.get_configs_from_pipeline_file(str(copy))[
        "train_config"].optimizer.momentum_optimizer.learning_rate.cosine_decay_learning_rate
    assert (cosine.total_steps, cosine.warmup_steps) == (50, 49)
    source.write_text(CONFIG.replace(
        "cosine_decay_learning_rate { learning_rate_base: 0.04 total_steps: 800 warmup_steps: 80"
        "\n  warmup_learning_rate: 0.004 }", "constant_learning_rate { learning_rate: 0.01 }"))
    budget.write_schedule(source, copy, 70)
    assert inputs.read_schedule(copy) == inputs.Schedule(70, 3, pytest.approx(0.01))


def test_the_plan_is_stored_in_the_training_folder_and_read_back(tmp_path):
    plan = budget.Plan(budget_minutes=7, num_steps=760, seconds_per_step=0.47,
                       restart_seconds=17.2, evaluation_seconds=11.0, evaluations=2)
    assert budget.read_plan(tmp_path) is None
    budget.write_plan(tmp_path, plan)
    assert (tmp_path / layout.BUDGET_PLAN_FILE).is_file()
    assert budget.read_plan(tmp_path) == plan
    assert plan.describe().startswith("time budget 7 min: 760 steps at 0.47 s/step, "
                                      "2 evaluations (")
    one = budget.Plan(0.3, 40, 0.1, 9.0, 4.0, 1).describe()
    assert one.startswith("time budget 0.3 min: 40 steps at 0.10 s/step, 1 evaluation (")
