"""Train custom object detectors with the TF2 Object Detection API, as a DVC pipeline."""
from pipeline.core import compat

# Before anything in this process imports TensorFlow (compat shim 0): Keras 2 as tf.keras.
compat.use_legacy_keras()
compat.quiet_known_stack_noise()

__version__ = "0.1.0"
