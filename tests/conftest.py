"""Shared test set-up.

Importing ``pipeline`` first sets TF_USE_LEGACY_KERAS=1 (compat shim 0) before any test module
imports TensorFlow, so that tf.keras is Keras 2 in the test process as in the stages.
"""
import pipeline  # noqa: F401  (imported for its side effect, before TensorFlow)
