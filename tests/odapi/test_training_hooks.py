"""The training hooks around the OD API's train_loop (pipeline/odapi/training_hooks.py)."""
import pytest

from pipeline.core import compat
from pipeline.odapi import training_hooks


@pytest.mark.parametrize("steps, expected", [(1000, 100), (30, 30), (250, 50), (97, 97),
                                             (101, 1), (1, 1)])
def test_steps_per_iteration_divides_num_steps(steps, expected):
    assert training_hooks.steps_per_iteration(steps) == expected


@pytest.mark.parametrize("train_steps, restored, every_n, expected", [
    (800, 0, 200, 10), (30, 12, 1000, 2), (30, 12, 6, 6), (40, 10, 10, 10), (25, 0, 1000, 5), (97, 0, 1000, 1),
])
def test_resume_block_divides_the_restored_step_the_target_and_the_checkpoint_interval(
        train_steps, restored, every_n, expected):
    block = training_hooks.resume_block_size(train_steps, restored, every_n)
    assert block == expected
    assert train_steps % block == 0 and restored % block == 0 and every_n % block == 0


def test_checkpoint_step_is_zero_without_checkpoints(tmp_path):
    assert training_hooks.checkpoint_step(tmp_path) == 0


def test_train_step_callback_runs_every_n_steps_and_at_once_on_a_non_finite_loss(monkeypatch):
    compat.apply()
    import math

    import tensorflow as tf
    from object_detection import model_lib_v2

    losses = tf.constant([1.0] * 12 + [math.nan] + [1.0] * 7)  # the 13th step's loss is NaN

    def fake_train_step(*args, training_step, **kwargs):
        return {"Loss/total_loss": tf.gather(losses, training_step)}

    monkeypatch.setattr(model_lib_v2, "eager_train_step", fake_train_step)
    calls = []
    training_hooks.observe_train_steps(lambda step, loss: calls.append((step, loss)), every_n=5)
    step = tf.Variable(0, dtype=tf.int64)

    @tf.function
    def train_20_steps():
        for _ in tf.range(20):
            model_lib_v2.eager_train_step(None, training_step=step)
            step.assign_add(1)

    train_20_steps()
    assert [s for s, _ in calls] == [5, 10, 13, 15, 20]
    assert math.isnan(dict(calls)[13]) and dict(calls)[20] == 1.0
    assert training_hooks.od_api_original(model_lib_v2.eager_train_step) is fake_train_step
