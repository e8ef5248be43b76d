"""Datasets: readers by format, per-image checks, the Beam conversion, the data report, sample."""
