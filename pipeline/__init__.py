"""Train custom object detectors with the TF2 Object Detection API, as a DVC pipeline."""
from pipeline.core import compat, logs

# Before anything in this process imports TensorFlow (compat shim 0): Keras 2 as tf.keras.
compat.use_legacy_keras()
logs.apply()  # the stack's log lines only with --verbose / ODP_VERBOSE=1 (also in Beam workers)
logs.install_quiet_tensorflow_import()
compat.quiet_known_stack_noise()

__version__ = "0.1.0"
