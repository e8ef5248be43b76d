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


def test_every_checkpoint_train_loop_saves_is_reported_with_its_step(tmp_path, monkeypatch):
    compat.apply()
    import tensorflow as tf
    from object_detection import model_lib_v2

    def fake_train_loop(model_dir, train_steps, **kwargs):
        step = tf.Variable(0, dtype=tf.int64)
        manager = tf.compat.v2.train.CheckpointManager(tf.train.Checkpoint(step=step), model_dir,
                                                       max_to_keep=5)
        manager.save()  # step 0, as train_loop does
        step.assign(4)
        manager.save()
        step.assign(train_steps)  # the final step, not saved by the loop itself

    monkeypatch.setattr(model_lib_v2, "train_loop", fake_train_loop)
    monkeypatch.setattr(model_lib_v2.inputs, "train_input", model_lib_v2.inputs.train_input)
    training_hooks.save_final_checkpoint_after_train_loop()
    saved = []
    training_hooks.observe_checkpoints(lambda step, path: saved.append((step, path)))
    try:
        model_lib_v2.train_loop(model_dir=str(tmp_path), train_steps=6)
    finally:
        training_hooks.observe_checkpoints(None)
    assert [step for step, _ in saved] == [0, 4, 6]
    assert saved[-1][1] == tf.train.latest_checkpoint(str(tmp_path))
    assert training_hooks.checkpoint_step(tmp_path) == 6


def test_the_train_input_is_wrapped_once_without_the_autotune_model_thread():
    import types

    import tensorflow as tf

    module = types.SimpleNamespace(train_input=lambda *a, **k: tf.data.Dataset.range(3))
    assert module.train_input().options().autotune.enabled is not False
    training_hooks.without_autotune_model_thread(module)
    wrapped = module.train_input
    training_hooks.without_autotune_model_thread(module)
    assert module.train_input is wrapped
    dataset = module.train_input()
    assert dataset.options().autotune.enabled is False
    assert list(dataset.as_numpy_iterator()) == [0, 1, 2]


def test_replica_prefetch_datasets_are_built_once_wrapped_without_autotune(monkeypatch):
    import tensorflow as tf
    from tensorflow.python.data.ops import multi_device_iterator_ops

    monkeypatch.setattr(multi_device_iterator_ops, "_create_device_dataset",
                        lambda *args, **kwargs: tf.data.Dataset.range(3))
    training_hooks.without_autotune_on_replica_prefetch()
    wrapped = multi_device_iterator_ops._create_device_dataset
    training_hooks.without_autotune_on_replica_prefetch()
    assert multi_device_iterator_ops._create_device_dataset is wrapped
    dataset = wrapped("prototype", 0, 1, False)
    assert dataset.options().autotune.enabled is False
    assert list(dataset.as_numpy_iterator()) == [0, 1, 2]


def test_a_distributed_input_still_yields_every_batch_after_the_replica_prefetch_hook(
        monkeypatch):
    import tensorflow as tf
    from tensorflow.python.data.ops import multi_device_iterator_ops

    # Registered first, so that the hook's own assignment is undone after the test.
    monkeypatch.setattr(multi_device_iterator_ops, "_create_device_dataset",
                        multi_device_iterator_ops._create_device_dataset)
    training_hooks.without_autotune_on_replica_prefetch()
    hooked, created = multi_device_iterator_ops._create_device_dataset, []

    def recording(*args, **kwargs):
        created.append(hooked(*args, **kwargs))
        return created[-1]

    monkeypatch.setattr(multi_device_iterator_ops, "_create_device_dataset", recording)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    batches = strategy.distribute_datasets_from_function(
        lambda context: tf.data.Dataset.range(6).batch(2))

    @tf.function
    def total(iterator):  # consumed inside a function, as train_loop does
        return strategy.run(tf.reduce_sum, args=(next(iterator),))

    iterator = iter(batches)
    assert [int(total(iterator)) for _ in range(3)] == [1, 5, 9]
    assert created and all(ds.options().autotune.enabled is False for ds in created)


def test_replica_prefetch_hook_is_a_no_op_where_tensorflow_lacks_the_function(monkeypatch):
    from tensorflow.python.data.ops import multi_device_iterator_ops

    monkeypatch.delattr(multi_device_iterator_ops, "_create_device_dataset")
    training_hooks.without_autotune_on_replica_prefetch()
    assert not hasattr(multi_device_iterator_ops, "_create_device_dataset")


def test_hook_b_whole_wraps_the_train_input_and_the_replica_prefetch(monkeypatch):
    import types

    import tensorflow as tf
    from tensorflow.python.data.ops import multi_device_iterator_ops

    monkeypatch.setattr(multi_device_iterator_ops, "_create_device_dataset",
                        lambda *args, **kwargs: tf.data.Dataset.range(2))
    module = types.SimpleNamespace(train_input=lambda *a, **k: tf.data.Dataset.range(3))
    training_hooks.without_autotune_threads(module)
    assert module.train_input().options().autotune.enabled is False
    replica = multi_device_iterator_ops._create_device_dataset("prototype", 0, 1, False)
    assert replica.options().autotune.enabled is False
