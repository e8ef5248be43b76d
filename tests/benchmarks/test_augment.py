"""benchmarks/augment.py: every run's params are valid product params (recipes included)."""
from __future__ import annotations

import pytest
import yaml

from pipeline.core.params import params_from_dict
from tests.paths import ROOT, load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/augment.py")


def _merged(overrides: dict) -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in overrides.items():
        params[section].update(values)
    return params


@pytest.mark.parametrize("dataset", ["bccd", "sample"])
def test_every_recipe_gives_valid_params(bench, dataset: str) -> None:
    for recipe in bench.RECIPES:
        overrides = bench.run_params(dataset, recipe, 300, ["model.image_size=320"])
        params = params_from_dict(_merged(overrides))
        assert list(params.train.augmentations) == bench.RECIPES[recipe]
        assert params.train.num_steps == 300 and params.model.image_size == 320


def test_set_values_are_yaml(bench) -> None:
    overrides = bench.run_params("sample", "template", 10,
                                 ["train.augmentations=[random_rotation90]", "train.seed=3"])
    assert overrides["train"]["augmentations"] == ["random_rotation90"]
    assert overrides["train"]["seed"] == 3
    assert "data" not in overrides  # the sample: the default data params
