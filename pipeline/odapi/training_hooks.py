"""Training hooks: what the train stage adds to the OD API's ``model_lib_v2.train_loop``.

These are features of this product, not workarounds of a version mismatch (those stay in
:mod:`pipeline.core.compat`): ``train_loop`` behaves this way on every TensorFlow, and the hooks
give it what the stage promises: training stops exactly at ``train.num_steps`` and the final
step is always checkpointed (A), the train input does not stall for a minute when the loop ends
(B), and a Python callback sees the loss (progress and the NaN/Inf guard) (C). They wrap OD API
functions in place, like the compat shims, and each says when it could go. They were compat
shims 4-6 before issue 15. Call :func:`pipeline.core.compat.apply` before any of them.

B works around an upstream TensorFlow behaviour (tf.data's autotune thread), which is no
version drift either: it lives here because only the train_loop wrapper of A installs it.
"""
from __future__ import annotations

import math

from pipeline.core import compat

# --- A. Final checkpoint and exact step count -------------------------------------------------
# Problem: ``model_lib_v2.train_loop`` saves at step 0 (before the model's variables exist) and
# then only every ``checkpoint_every_n`` steps, so the last steps are never saved unless
# num_steps is a multiple of it, and export then fails with "objects not bound to checkpointed
# values". It also runs steps in blocks of ``NUM_STEPS_PER_ITERATION`` (100) and
# ``model_main_tf2`` cannot change that, so a num_train_steps that is not a multiple of 100 is
# overshot (30 steps train 100).
# Hook: a CheckpointManager that remembers the step it last saved, and a train_loop wrapper
# that picks a block size dividing num_steps and saves once more after the loop when the final
# step is not saved yet. Drop when train_loop does both itself.
# Resuming: train_loop restores the latest checkpoint in model_dir and runs
# ``range(restored_step, train_steps, block)``; its summaries are recorded only when
# ``global_step % block == 0``. So the block must divide the restored step as well as
# train_steps (and checkpoint_every_n, so that checkpoints land on schedule): the wrapper uses
# the largest divisor <= 10 of their gcd; blocks of at most 10 steps also give the loss curves a
# point every 10 steps. Each save flushes the event files first, so that a crash never leaves
# a checkpoint whose curve up to that step is lost (the writer flushes every 120 s otherwise),
# and is reported to the callback of :func:`observe_checkpoints`, so that the caller knows the
# step of the latest checkpoint without reading it back from disk; the callback may evaluate
# the checkpoint there and then, and may raise to end training (the exception leaves
# train_loop; nothing more is saved). When the loop returns or raises, the hook drops its
# managers and collects the loop's objects (compat shim 10).

_checkpoint_callback = None


def observe_checkpoints(callback) -> None:
    """Call ``callback(step, path)`` after every checkpoint ``train_loop`` saves (``None``: stop)."""
    global _checkpoint_callback
    _checkpoint_callback = callback


def save_final_checkpoint_after_train_loop() -> None:
    """Wrap ``model_lib_v2.train_loop`` so that the final step is always checkpointed."""
    import tensorflow as tf
    from object_detection import model_lib_v2

    if getattr(model_lib_v2.train_loop, "_saves_final_step", False):
        return
    original_manager = tf.compat.v2.train.CheckpointManager
    managers: list = []

    class RecordingCheckpointManager(original_manager):
        last_saved_step = None

        def save(self, *args, **kwargs):
            # Events first: once a checkpoint is listed, its curve is on disk.
            tf.compat.v2.summary.flush()
            path = super().save(*args, **kwargs)
            self.last_saved_step = _step(self)
            if _checkpoint_callback is not None:
                _checkpoint_callback(self.last_saved_step, path)
            return path

    def train_loop(*args, **kwargs):
        without_autotune_threads(model_lib_v2.inputs)
        if kwargs.get("train_steps") and "num_steps_per_iteration" not in kwargs:
            kwargs["num_steps_per_iteration"] = resume_block_size(
                kwargs["train_steps"], checkpoint_step(kwargs.get("model_dir")),
                kwargs.get("checkpoint_every_n", 1000))
        managers.clear()  # the managers of an earlier train_loop call in this process
        tf.compat.v2.train.CheckpointManager = RecordingCheckpointManager
        try:
            result = original_train_loop(*args, **kwargs)
            for manager in managers:
                if manager.last_saved_step != _step(manager):
                    manager.save()
        finally:  # also when a callback stopped the loop (early stopping, a NaN loss)
            tf.compat.v2.train.CheckpointManager = original_manager
            release_training_objects(managers)
        return result

    def _step(manager) -> int:
        return int(manager.checkpoint.step.value())  # a MirroredVariable under a strategy

    def recording_init(self, *args, **kwargs):
        original_manager.__init__(self, *args, **kwargs)
        managers.append(self)

    RecordingCheckpointManager.__init__ = recording_init
    original_train_loop = model_lib_v2.train_loop
    train_loop._saves_final_step = True
    train_loop.od_api_original = original_train_loop
    model_lib_v2.train_loop = train_loop


def release_training_objects(managers: list) -> None:
    """Drop the hook's last references to the loop's model (each manager holds its checkpoint,
    hence the model, its optimizer and the fine-tuning restore) and collect them now, while
    TensorFlow's runtime is alive (compat shim 10: a fine-tuning process crashed at exit)."""
    managers.clear()
    compat.collect_garbage_while_tensorflow_runs()


def od_api_original(function):
    """The OD API's own function under the wrappers of hooks A-C (for comparisons with it)."""
    while hasattr(function, "od_api_original"):
        function = function.od_api_original
    return function


def steps_per_iteration(num_steps: int, limit: int = 100) -> int:
    """The largest block size <= ``limit`` that divides ``num_steps`` (1 at worst)."""
    return max(k for k in range(1, min(limit, num_steps) + 1) if num_steps % k == 0)


def resume_block_size(train_steps: int, restored_step: int, checkpoint_every_n: int) -> int:
    """Steps per ``train_loop`` block when resuming at ``restored_step`` (see above)."""
    return steps_per_iteration(math.gcd(train_steps, restored_step, checkpoint_every_n), limit=10)


def checkpoint_step(model_dir) -> int:
    """The global step of the latest checkpoint in ``model_dir`` (0 when there is none)."""
    import tensorflow as tf

    latest = tf.train.latest_checkpoint(str(model_dir)) if model_dir else None
    return int(tf.train.load_variable(latest, "step/.ATTRIBUTES/VARIABLE_VALUE")) if latest else 0


# --- B. tf.data teardown stall ----------------------------------------------------------------
# Problem: when train_loop returns, destroying its input iterator waits for tf.data's autotune
# model thread, which sleeps up to its 60 s optimisation period: every run longer than about a
# minute ends with a ~58 s stall (measured here: 300 steps, 58 s between the last checkpoint and
# train_loop's return). Hook (applied by the train_loop wrapper above): the train input dataset
# gets ``autotune.enabled = False``; its AUTOTUNE parallelism then defaults to the number of
# cores. Measured on 2 cores: 0.481 s/step without autotune, 0.473 s/step with it, no stall.
# The strategy's input adds one more such iterator: tf.distribute feeds each replica through a
# MultiDeviceIterator, whose per-device dataset (a ``prefetch(1)`` on the device) is built
# with default options, so its iterator has an autotune thread of its own; when the training
# step consumes it inside a tf.function, cancelling the iterator does not wake that thread and
# train_loop's return waited for it: 1-61 s after the last checkpoint over 17 default runs (gdb:
# the main thread in ``RootDataset::Iterator::~Iterator``, the model thread in
# ``Model::OptimizeLoop``). The hook also builds the per-device datasets without autotune; a
# one-element prefetch has nothing to tune.
# Drop when TensorFlow wakes the model thread on cancellation.


def without_autotune_threads(inputs_module) -> None:
    """Hook B whole: the train input and the per-replica prefetch datasets without autotuning."""
    without_autotune_model_thread(inputs_module)
    without_autotune_on_replica_prefetch()


def _without_autotune(dataset):
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def without_autotune_model_thread(inputs_module) -> None:
    """Make ``inputs.train_input`` return its dataset with tf.data autotuning disabled."""
    original = inputs_module.train_input
    if getattr(original, "_without_autotune", False):
        return

    def train_input(*args, **kwargs):
        return _without_autotune(original(*args, **kwargs))

    train_input._without_autotune = True
    train_input.od_api_original = original
    inputs_module.train_input = train_input


def without_autotune_on_replica_prefetch() -> None:
    """Build the per-device datasets of tf.distribute's MultiDeviceIterator without autotuning
    (TensorFlow's private ``multi_device_iterator_ops._create_device_dataset``; see above)."""
    from tensorflow.python.data.ops import multi_device_iterator_ops

    original = getattr(multi_device_iterator_ops, "_create_device_dataset", None)
    if original is None or getattr(original, "_without_autotune", False):
        return  # None: another TensorFlow builds them elsewhere; training runs, maybe with the wait

    def create_device_dataset(*args, **kwargs):
        return _without_autotune(original(*args, **kwargs))

    create_device_dataset._without_autotune = True
    multi_device_iterator_ops._create_device_dataset = create_device_dataset


# --- C. Per-step callback -----------------------------------------------------------------------
# Problem: ``model_lib_v2.train_loop`` has no hook: it logs every 100 steps, and a NaN or Inf loss
# is trained on (and checkpointed) silently. Hook: wrap the module's ``eager_train_step``, which
# the loop looks up at trace time, so that the total loss and global step are handed to a Python
# callback (through ``tf.py_function``, so not on TPU). The loss is checked in the graph after
# every step; Python is called only every ``every_n`` steps and at once on a NaN or Inf loss, so
# that the host is not synchronised with the device after every step. The callback may raise to
# stop training: the error surfaces from ``train_loop`` before the next checkpoint is written.
# Drop when train_loop accepts callbacks (or a Keras-style training loop replaces it).

_train_step_callback = None
_callback_every_n = 10


def observe_train_steps(callback, every_n: int = 10) -> None:
    """Call ``callback(step, total_loss)`` with Python numbers after every ``every_n``-th
    training step, and after any step whose total loss is NaN or infinite."""
    global _train_step_callback, _callback_every_n
    import tensorflow as tf
    from object_detection import model_lib_v2

    _train_step_callback, _callback_every_n = callback, every_n
    if getattr(model_lib_v2.eager_train_step, "_observed", False):
        return
    original = model_lib_v2.eager_train_step

    def notify(step, loss):
        if _train_step_callback is not None:
            _train_step_callback(int(step), float(loss))
        return True

    def eager_train_step(*args, **kwargs):
        losses = original(*args, **kwargs)
        # training_step is read before train_loop's assign_add: the step just done is +1.
        step, loss = kwargs["training_step"] + 1, losses["Loss/total_loss"]
        wanted = tf.logical_or(tf.equal(step % _callback_every_n, 0),
                               tf.logical_not(tf.math.is_finite(loss)))
        done = tf.cond(wanted, lambda: tf.py_function(notify, [step, loss], Tout=tf.bool),
                       lambda: tf.constant(True))
        with tf.control_dependencies([done]):
            return {key: tf.identity(value) for key, value in losses.items()}

    eager_train_step._observed = True
    eager_train_step.od_api_original = original
    model_lib_v2.eager_train_step = eager_train_step
