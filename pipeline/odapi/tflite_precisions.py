"""The TFLite precisions the export stage can write (``export.tflite``; pipeline/odapi/tflite.py
converts to each).

A module of its own, without imports, so that params can validate against the list without
loading TensorFlow.
"""

TFLITE_PRECISIONS = ("float32", "float16", "int8")
