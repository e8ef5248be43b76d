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


def _project_with_template(tmp_path, text: str):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "tiny.config").write_text(text)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"model": {"name": "tiny"}}))
    return tmp_path


def test_template_replace_edits_the_named_template(bench, tmp_path) -> None:
    project = _project_with_template(tmp_path, "loss {\n  weight: 1.0\n}\nweight_decay: 1.0\n")
    bench.patch_template(project, [("loss {\\n  weight: 1.0", "loss {\n  weight: 2.0")])
    assert (project / "configs" / "tiny.config").read_text() == (
        "loss {\n  weight: 2.0\n}\nweight_decay: 1.0\n")


@pytest.mark.parametrize("old", ["absent: 1", "1.0"])
def test_template_replace_needs_exactly_one_match(bench, tmp_path, old: str) -> None:
    project = _project_with_template(tmp_path, "weight: 1.0\nother: 1.0\n")
    with pytest.raises(SystemExit, match="expected once"):
        bench.patch_template(project, [(old, "x")])
    assert (project / "configs" / "tiny.config").read_text() == "weight: 1.0\nother: 1.0\n"


def test_template_replace_is_parsed_in_pairs(bench) -> None:
    args = bench.parse_args(["--template-replace", "a: 1", "a: 2", "--template-replace", "b", "c"])
    assert args.template_replace == [["a: 1", "a: 2"], ["b", "c"]]


def test_without_steps_a_run_keeps_the_params_file_step_count(bench) -> None:
    assert bench.parse_args([]).steps is None
    overrides = bench.run_params("sample", "template", None, [])
    assert "num_steps" not in overrides["train"]
    shipped = yaml.safe_load((ROOT / "params.yaml").read_text())["train"]["num_steps"]
    assert params_from_dict(_merged(overrides)).train.num_steps == shipped
