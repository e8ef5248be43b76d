"""Annotation readers, one module per format, registered in readers/registry.py."""
