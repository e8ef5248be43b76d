"""params.yaml is read into a typed object; bad params are refused with a precise message."""
import re
import time
from pathlib import Path

import pytest

from pipeline.core.params import Params, ParamsError, available_models, load_params, params_from_dict

from tests.paths import ROOT


def test_shipped_params_file_is_valid_and_uses_the_default_model():
    params = load_params(ROOT / "params.yaml")
    assert params.model.name in available_models()
    assert params.sample.classes == ("circle", "square", "triangle")


def test_empty_file_gives_the_documented_defaults(tmp_path):
    (tmp_path / "p.yaml").write_text("")
    assert load_params(tmp_path / "p.yaml") == Params()


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"trian": {}}, "unknown key(s) ['trian'] in params.yaml; allowed: ['convert', 'data'"),
        ({"train": {"batch": 4}}, "unknown key(s) ['train.batch'] in train; allowed: ['augmentations', 'batch_size'"),
        ({"train": {"batch_size": "16"}}, "train.batch_size must be of type int, got '16' (str)"),
        ({"train": {"batch_size": True}}, "train.batch_size must be of type int, got True (bool)"),
        ({"train": {"batch_size": 0}}, "train.batch_size must be in [1, 4096], got 0"),
        ({"train": {"learning_rate": -1}}, "train.learning_rate must be in [0.0, 10.0], got -1.0"),
        ({"data": {"format": "kitti"}},
         "data.format must be one of ['voc', 'coco', 'yolo'], got 'kitti'"),
        ({"model": {"name": "yolo"}}, "model.name must be one of ['efficientdet_d0', "
                                      "'faster_rcnn_resnet50_640', 'ssd_mobilenet_v2_320', "
                                      "'ssd_mobilenet_v2_fpnlite_320', "
                                      "'ssd_mobilenet_v2_fpnlite_cpu'], got 'yolo'"),
        ({"model": {"image_size": 16}}, "model.image_size must be 0 (the template's) or in [32"),
        ({"model": {"checkpoint": ""}}, "model.checkpoint must be 'none', 'zoo' or a path"),
        ({"model": {"checkpoint": "zoo", "checkpoint_sha256": "abc"}},
         "model.checkpoint_sha256 must be '' or 64 lowercase hex digits, got 'abc'"),
        ({"model": {"checkpoint_sha256": "a" * 64}}, "model.checkpoint_sha256 is set but"),
        ({"model": {"nms_iou_threshold": 0}}, "model.nms_iou_threshold must be in [0.01, 1.0]"),
        ({"train": {"augmentations": ["mixup"]}},
         "train.augmentations has unknown name(s) ['mixup']; allowed: ['none', 'random_horiz"),
        ({"train": {"augmentations": ["none", "random_horizontal_flip"]}},
         "'none' cannot be combined"),
        ({"sample": {"classes": ["circle", "blob"]}}, "sample.classes has unknown shape(s) ['blob']"),
        ({"sample": {"classes": "circle"}}, "sample.classes must be a list of str, got 'circle'"),
        ({"train": {"num_steps": 10, "warmup_steps": 10}}, "train.warmup_steps must be smaller"),
        ({"train": []}, "train must be a mapping, got list"),
        ({"export": {"input_type": "float"}}, "export.input_type must be one of ['image_tensor'"),
    ],
)
def test_bad_params_name_the_key_and_the_allowed_values(raw, message):
    with pytest.raises(ParamsError) as err:
        params_from_dict(raw)
    assert message in str(err.value)


def test_int_is_accepted_where_a_float_is_expected():
    assert params_from_dict({"train": {"learning_rate": 1}}).train.learning_rate == 1.0


def test_invalid_yaml_is_a_params_error(tmp_path):
    (tmp_path / "p.yaml").write_text("train: [unclosed")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(tmp_path / "p.yaml")


def test_params_objects_are_frozen():
    params = Params()
    with pytest.raises(AttributeError):
        params.train.batch_size = 3


def test_dataclass_defaults_match_the_shipped_params_file():
    """Params() documents the same defaults as params.yaml (except paths a user edits)."""
    assert load_params(ROOT / "params.yaml") == Params()


def test_models_yaml_entries_are_typed_and_validated(tmp_path):
    from pipeline.odapi import templates as zoo

    (tmp_path / "m.config").write_text("")
    bad = {"reference_batch_size: 0": "m.reference_batch_size must be in [1, 65536], got 0",
           "reference_batch_size: 8\n  colour: red": "unknown key(s) ['m.colour']",
           "reference_batch_size: 8\n  sha256: xyz\n  zoo_archive: a": "sha256 must be 64"}
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


# --- non-finite numbers (issue 13, 6a) ---------------------------------------------------------

FLOAT_KEYS = [("data", "val_fraction"), ("sample", "test_fraction"),
              ("export", "verify_tolerance"), ("report", "score_threshold"),
              ("train", "learning_rate"), ("model", "nms_iou_threshold")]


@pytest.mark.parametrize("section, key", FLOAT_KEYS)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_floats_are_refused_naming_the_key(section, key, value):
    with pytest.raises(ParamsError) as err:
        params_from_dict({section: {key: value}})
    message = str(err.value)
    assert message == f"{section}.{key} must be a finite number, got {value!r}"
    assert "\n" not in message


@pytest.mark.parametrize("text", [".nan", ".inf", "-.inf", ".NaN"])
def test_non_finite_floats_written_in_yaml_are_refused(tmp_path, text):
    (tmp_path / "p.yaml").write_text(f"export:\n  verify_tolerance: {text}\n")
    with pytest.raises(ParamsError, match=r"^export\.verify_tolerance must be a finite number"):
        load_params(tmp_path / "p.yaml")


def test_an_integer_too_large_for_a_float_is_refused_not_a_traceback():
    with pytest.raises(ParamsError, match=r"^train\.learning_rate must be a finite number"):
        params_from_dict({"train": {"learning_rate": 10**400}})


def test_every_float_param_has_a_range():
    """The range check is what keeps a float sane; a float field without bounds is a bug."""
    import dataclasses
    import typing

    for section, cls in typing.get_type_hints(Params).items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if hints[f.name] is float:
                assert f.metadata.get("min") is not None and f.metadata.get("max") is not None, \
                    f"{section}.{f.name}"


# --- params files built to hurt (issue 13, 7) --------------------------------------------------

BILLION_LAUGHS = "\n".join(
    ['train:', '  a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"  {b}: &{b} [{', '.join(['*' + a] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi")]
    + ["  augmentations: *i", ""])


def _refused_quickly(path: Path, seconds: float = 0.5) -> str:
    start = time.perf_counter()
    with pytest.raises(ParamsError) as err:
        load_params(path)
    assert time.perf_counter() - start < seconds
    assert "\n" not in str(err.value)
    return str(err.value)


def test_billion_laughs_is_refused_quickly(tmp_path):
    (tmp_path / "p.yaml").write_text(BILLION_LAUGHS)
    message = _refused_quickly(tmp_path / "p.yaml")
    assert message == (f"{tmp_path / 'p.yaml'}:3: YAML aliases (*name) are not allowed in "
                       "params files; write the value out")


def test_duplicate_keys_are_refused_with_the_key_and_line(tmp_path):
    (tmp_path / "p.yaml").write_text("train:\n  batch_size: 4\n  num_steps: 9\n  batch_size: 8\n")
    message = _refused_quickly(tmp_path / "p.yaml")
    assert message == f"{tmp_path / 'p.yaml'}:4: duplicate key 'batch_size' (first at line 2)"
    (tmp_path / "p.yaml").write_text("train: {}\nsample: {}\ntrain: {}\n")
    assert "duplicate key 'train' (first at line 1)" in _refused_quickly(tmp_path / "p.yaml")


def test_a_50_mb_document_is_refused_before_it_is_read(tmp_path):
    line = "  - " + "x" * 75 + "\n"
    (tmp_path / "p.yaml").write_text("train:\n  augmentations:\n" + line * (50_000_000 // 80))
    message = _refused_quickly(tmp_path / "p.yaml")
    assert re.fullmatch(r".*p\.yaml is 500000\d\d bytes; a params file may have at most 262144",
                        message)


def test_deep_nesting_is_refused_not_a_recursion_error(tmp_path):
    (tmp_path / "p.yaml").write_text("train: " + "[" * 100_000 + "]" * 100_000 + "\n")
    # ~0.4 s whatever the depth: PyYAML's scanner looks 1024 characters ahead for keys
    assert "nested deeper than 32 levels" in _refused_quickly(tmp_path / "p.yaml", seconds=3)


def test_a_binary_file_is_refused_with_a_clear_message(tmp_path):
    (tmp_path / "p.yaml").write_bytes(b"train:\n  batch_size: \xff\xfe\n")
    assert "is not UTF-8 text" in _refused_quickly(tmp_path / "p.yaml")


def test_the_cli_prints_one_line_for_a_hostile_params_file(tmp_path, capsys):
    from pipeline.cli import main

    (tmp_path / "p.yaml").write_text(BILLION_LAUGHS)
    assert main(["sample", "--params", str(tmp_path / "p.yaml"), "--output",
                 str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "YAML aliases" in err
    assert not (tmp_path / "out").exists()


# --- runner, experiment name, dataset root (issue 13, 11b) -------------------------------------

@pytest.mark.parametrize("runner", ["DirectRunner", "DataflowRunner", "FlinkRunner", "SparkRunner",
                                    "PortableRunner", "PrismRunner",
                                    "apache_beam.runners.direct.direct_runner.DirectRunner"])
def test_known_beam_runners_and_class_paths_are_accepted(runner):
    assert params_from_dict({"convert": {"runner": runner}}).convert.runner == runner


@pytest.mark.parametrize("runner", ["DirectRuner", "", " ", "directrunner", "Direct Runner",
                                    "my.module.", ".Runner"])
def test_unknown_beam_runners_are_refused(runner):
    with pytest.raises(ParamsError) as err:
        params_from_dict({"convert": {"runner": runner}})
    assert str(err.value) == ("convert.runner must be one of ['DirectRunner', 'DataflowRunner', "
                              "'FlinkRunner', 'SparkRunner', 'PortableRunner', 'PrismRunner'] or "
                              f"a runner class path 'module.Class', got {runner!r}")


@pytest.mark.parametrize("name", ["", "   ", "\t"])
def test_an_empty_experiment_name_is_refused(name):
    with pytest.raises(ParamsError) as err:
        params_from_dict({"mlflow": {"experiment": name}})
    assert str(err.value) == f"mlflow.experiment must be a non-empty name, got {name!r}"


@pytest.mark.parametrize("root, message", [
    ("/", "data.root must be a dataset folder, not the filesystem root: '/'"),
    ("/../..", "data.root must be a dataset folder, not the filesystem root: '/../..'"),
    (str(ROOT), f"data.root must be a dataset folder, not the project ({ROOT}) or a folder "
                f"containing it: {str(ROOT)!r}"),
    (str(ROOT.parent), f"not the project ({ROOT}) or a folder containing it"),
    (str(ROOT / "models"), "data.root must be a dataset folder, not one holding the pipeline's "
                           "outputs ['models/exported', 'models/pipeline.config', 'models/train']"),
    (str(ROOT / "data"), "holding the pipeline's outputs ['data/tfrecords']"),
    (str(ROOT / "data" / "tfrecords"), "holding the pipeline's outputs ['data/tfrecords']"),
    (str(ROOT / "reports"), "holding the pipeline's outputs ['reports/detections.json'"),
])
def test_a_dataset_root_holding_the_project_or_its_outputs_is_refused(root, message):
    with pytest.raises(ParamsError) as err:
        params_from_dict({"data": {"root": root}})
    assert message in str(err.value)
    assert str(err.value).endswith(repr(root))


def test_relative_dataset_roots_are_resolved_from_the_working_directory(monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    with pytest.raises(ParamsError, match="not the project"):
        params_from_dict({"data": {"root": "."}})
    with pytest.raises(ParamsError, match="outputs"):
        params_from_dict({"data": {"root": "data/"}})
    assert params_from_dict({"data": {"root": "data/sample"}}).data.root == "data/sample"
    monkeypatch.chdir(tmp_path)
    assert params_from_dict({"data": {"root": "."}}).data.root == "."
    assert params_from_dict({"data": {"root": "gs://bucket/voc"}}).data.root == "gs://bucket/voc"


def test_check_params_command_validates_without_doing_work(tmp_path, capsys):
    from pipeline.cli import main

    assert main(["check-params", "--params", str(ROOT / "params.yaml")]) == 0
    assert capsys.readouterr().out == f"{ROOT / 'params.yaml'}: valid\n"
    (tmp_path / "p.yaml").write_text("train: {}\ntrain: {}\n")
    assert main(["check-params", "--params", str(tmp_path / "p.yaml")]) == 2
    assert "duplicate key 'train'" in capsys.readouterr().err
