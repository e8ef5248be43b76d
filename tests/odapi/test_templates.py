"""configs/models.yaml: typed, validated entries, one per template file."""
import re

import pytest

from pipeline.core.errors import ParamsError
from pipeline.odapi import templates as zoo


def test_models_yaml_entries_are_typed_and_validated(tmp_path):
    (tmp_path / "m.config").write_text("")
    bad = {"reference_batch_size: 0": "m.reference_batch_size must be in [1, 65536], got 0",
           "reference_batch_size: 8\n  colour: red": "unknown key(s) ['m.colour']",
           "reference_batch_size: 8\n  sha256: xyz\n  zoo_archive: a":
               "m.sha256 must be '' or 64 lowercase hex digits, got 'xyz'"}
    for entry, message in bad.items():
        (tmp_path / "models.yaml").write_text(
            f"m:\n  description: d\n  reference_learning_rate: 0.1\n  {entry}\n")
        with pytest.raises(ParamsError, match=re.escape(message)):
            zoo.load_specs(tmp_path / "models.yaml")
    (tmp_path / "models.yaml").write_text("m:\n  description: d\n")
    with pytest.raises(ParamsError, match="missing key"):
        zoo.load_specs(tmp_path / "models.yaml")
    (tmp_path / "models.yaml").write_text(
        "other:\n  description: d\n  reference_batch_size: 1\n  reference_learning_rate: 1\n")
    with pytest.raises(ParamsError, match="lists 'other' but other.config is missing"):
        zoo.load_specs(tmp_path / "models.yaml")
