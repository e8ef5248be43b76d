"""Train custom object detectors with the TF2 Object Detection API, as a DVC pipeline."""

__version__ = "0.1.0"
