"""The template registry: configs/models.yaml has typed, validated entries, one per template
file, and every template parses and states the reference its entry records."""
import re

import pytest
import yaml

from pipeline.core.errors import ParamsError
from pipeline.core.params import available_models
from pipeline.odapi import pipeline_config
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


@pytest.mark.parametrize("name", available_models())
def test_every_template_parses(name):
    assert pipeline_config.load_template(name).model.WhichOneof("model")


def test_the_shipped_templates_and_models_yaml_match_one_to_one():
    on_disk = {p.stem for p in zoo.CONFIGS_DIR.glob("*.config")}
    assert set(available_models()) == on_disk


@pytest.mark.parametrize("name", available_models())
def test_each_template_states_the_reference_that_models_yaml_records(name):
    """The template's own batch size and peak LR are the reference the LR is scaled from."""
    spec, tc = zoo.spec_for(name), pipeline_config.load_template(name).train_config
    cosine = tc.optimizer.momentum_optimizer.learning_rate.cosine_decay_learning_rate
    assert tc.batch_size == spec.reference_batch_size
    assert cosine.learning_rate_base == pytest.approx(spec.reference_learning_rate)
    assert "Reference: batch_size" in zoo.template_path(name).read_text()


def parametrized_names(test) -> set[str]:
    """The values a test is parametrized with for its ``name`` argument (its ids)."""
    marks = [m for m in getattr(test, "pytestmark", []) if m.name == "parametrize"]
    return {value for mark in marks if mark.args[0] == "name" for value in mark.args[1]}


def test_every_template_in_models_yaml_is_in_every_template_test():
    """A template added to configs/models.yaml is tested without editing a test: each test that
    loops over templates is parametrized with all of them (models.yaml read here on its own)."""
    from tests.odapi import test_model_templates, test_pipeline_config, test_zoo_templates

    entries = yaml.safe_load(zoo.MODELS_FILE.read_text())
    listed = set(entries)
    with_zoo = {name for name, entry in entries.items() if entry.get("zoo_archive")}
    assert len(listed) >= 5 and with_zoo
    zoo_test = test_zoo_templates.\
        test_zoo_checkpoint_of_each_template_is_pinned_cached_refused_when_changed_and_restored
    loops = {test_model_templates.test_template_builds_and_trains_one_step_on_cpu: listed,
             zoo_test: with_zoo,
             test_pipeline_config.test_image_size_zero_keeps_the_template_size: listed,
             test_every_template_parses: listed,
             test_each_template_states_the_reference_that_models_yaml_records: listed}
    for test, expected in loops.items():
        assert parametrized_names(test) == expected, test.__name__


@pytest.mark.parametrize("name", available_models())
def test_input_sizes_start_at_the_template_s_own_size(name):
    """configure derives model.image_size from these (data_defaults): never below the size the
    template's anchors and feature levels were designed for."""
    sizes = zoo.spec_for(name).input_sizes
    assert sizes[0] == pipeline_config.image_size(pipeline_config.load_template(name))
    assert sizes[-1] ** 2 <= 2.25 * sizes[0] ** 2  # the cost cap: a step costs ~ size^2


def test_input_sizes_must_ascend(tmp_path):
    (tmp_path / "m.config").write_text("")
    (tmp_path / "models.yaml").write_text(
        "m:\n  description: d\n  reference_batch_size: 8\n  reference_learning_rate: 0.1\n"
        "  input_sizes: [320, 256]\n")
    with pytest.raises(ParamsError, match=re.escape("input_sizes must be distinct and ascending")):
        zoo.load_specs(tmp_path / "models.yaml")
