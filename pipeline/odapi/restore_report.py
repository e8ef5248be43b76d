"""Training hook E: what a fine-tuning run restored from its checkpoint, checked by value.

Problem: ``model_lib_v2.train_loop`` restores ``fine_tune_checkpoint`` into the freshly built
model (only when the model directory has no checkpoint yet) and says nothing about what it
restored: a checkpoint of the wrong layout, or a part the restore map misses, trains from
random weights without a word. Hook: ``load_fine_tune_checkpoint`` is wrapped so that, right
after the restore, every variable the restore map covers (type ``detection``: the feature
extractor with its FPN / BiFPN; Faster R-CNN: both feature extractors) is compared with the
checkpoint's value, and the model's variables outside the map (the box and class heads:
freshly initialised) are listed. The report goes to the callback of :func:`observe_restores`
(the training loop: log, ``fine_tune_restore.json``, MLflow). Drop when the OD API reports
its restores itself.
"""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)

_callback = None


def observe_restores(callback) -> None:
    """Call ``callback(report)`` after each fine-tuning restore (``None``: stop); see
    :func:`compare` for the report."""
    global _callback
    _callback = callback
    if callback is not None:
        _install()


def _install() -> None:
    from object_detection import model_lib_v2

    original = model_lib_v2.load_fine_tune_checkpoint
    if getattr(original, "_reports", False):
        return

    def load_fine_tune_checkpoint(model, checkpoint_path, checkpoint_type, *args, **kwargs):
        original(model, checkpoint_path, checkpoint_type, *args, **kwargs)
        if _callback is None:
            return
        try:
            report = compare(model, checkpoint_path, checkpoint_type)
        except Exception as err:  # a report must never stop the training it describes
            log.warning("could not check what was restored from %s: %s", checkpoint_path, err)
            return
        _callback(report)

    load_fine_tune_checkpoint._reports = True
    load_fine_tune_checkpoint.od_api_original = original
    model_lib_v2.load_fine_tune_checkpoint = load_fine_tune_checkpoint


def compare(model, checkpoint_path: str, checkpoint_type: str) -> dict:
    """Restored / unrestored / freshly initialised variables of ``model`` after the restore:
    counts, and the names of the unrestored and fresh ones. A variable of the restore map is
    restored when its value equals the checkpoint's."""
    import numpy as np
    import tensorflow as tf

    restore_map = model.restore_from_objects(fine_tune_checkpoint_type=checkpoint_type)
    covered = keys_of_variables(tf.train.Checkpoint(**restore_map))
    source = tf.train.load_checkpoint(checkpoint_path)
    restored = sorted(key for key, variable in covered.items() if source.has_tensor(key)
                      and np.array_equal(variable.numpy(), source.get_tensor(key)))
    names = {v.name for v in covered.values()}
    fresh = sorted(v.name for v in model.variables if v.name not in names)
    unrestored = sorted(set(covered) - set(restored))
    report = {"checkpoint": checkpoint_path, "type": checkpoint_type,
              "restored_variables": len(restored), "unrestored_variables": len(unrestored),
              "freshly_initialised_variables": len(fresh), "unrestored": unrestored,
              "freshly_initialised": fresh}
    log.info("fine-tuning from %s (%s): %d variables restored (values equal to the "
             "checkpoint's), %d unrestored, %d freshly initialised (heads)", checkpoint_path,
             checkpoint_type, len(restored), len(unrestored), len(fresh))
    if unrestored:
        log.warning("variables of the restored parts left unrestored: %s", unrestored)
    return report


def keys_of_variables(root) -> dict:
    """The checkpoint key each variable under ``root`` is saved (and restored) under: the
    breadth-first object paths ``tf.train.Checkpoint`` uses, computed without writing a
    checkpoint (TensorFlow has no public API for them: ``TrackableView`` and
    ``trackable_utils`` are internal, stable since TF 2.10)."""
    import tensorflow as tf
    from tensorflow.python.trackable import trackable_utils

    nodes, paths = tf.train.TrackableView(root)._descendants_with_paths()
    return {trackable_utils.checkpoint_key(trackable_utils.object_path_to_string(paths[node]),
                                           "VARIABLE_VALUE"): node
            for node in nodes if isinstance(node, tf.Variable)}
