"""params.yaml is read into a typed object; bad params are refused with a precise message."""
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core.params import (ModelParams, Params, ParamsError, TrainParams, available_models,
                                  load_params, params_from_dict, pinned)

from tests.core.test_schema import BILLION_LAUGHS
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
        ({"model": {"image_size": 16}},
         "model.image_size must be 0 (derived from the data) or in [32"),
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
        ({"train": {"num_steps": 10, "warmup_steps": 1, "freeze_backbone_steps": 10}},
         "train.freeze_backbone_steps must be -1 (throughout), 0 (never) or smaller than"),
        ({"train": {"freeze_backbone_steps": -2}}, "train.freeze_backbone_steps must be"),
        ({"train": {"early_stopping": 3, "eval_every_n": 0}},
         "train.early_stopping is 3 but train.eval_every_n is 0"),
        ({"train": {"time_budget_minutes": -1}},
         "train.time_budget_minutes must be in [0.0, 100000.0], got -1.0"),
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


def test_a_float_that_yaml_1_1_reads_as_a_string_is_accepted_like_dvc_does(tmp_path):
    """PyYAML (YAML 1.1) reads ``1e-3`` as the string '1e-3'; DVC reads a number (issue 17)."""
    (tmp_path / "p.yaml").write_text("train:\n  learning_rate: 1e-3\nreport:\n"
                                     "  score_threshold: '0.25'\n")
    params = load_params(tmp_path / "p.yaml")
    assert params.train.learning_rate == 0.001 and params.report.score_threshold == 0.25


@pytest.mark.parametrize("raw, message", [
    ({"train": {"learning_rate": "fast"}},
     "train.learning_rate must be of type float, got 'fast' (str)"),
    ({"train": {"learning_rate": "1e9"}},
     "train.learning_rate must be in [0.0, 10.0], got 1000000000.0"),
    ({"train": {"learning_rate": "nan"}}, "train.learning_rate must be a finite number, got 'nan'"),
    ({"train": {"learning_rate": True}},
     "train.learning_rate must be of type float, got True (bool)"),
    ({"train": {"num_steps": "1e3"}}, "train.num_steps must be of type int, got '1e3' (str)"),
])
def test_only_float_fields_accept_numeric_strings_and_only_numbers(raw, message):
    with pytest.raises(ParamsError) as err:
        params_from_dict(raw)
    assert str(err.value) == message


@pytest.mark.parametrize("raw, hint", [
    ({"trian": {}}, "; did you mean 'train'?"),
    ({"train": {"Batch_Size": 4}}, "; did you mean 'train.batch_size'?"),
    ({"model": {"nme": "x"}}, "; did you mean 'model.name'?"),
    ({"train": {"lerning_rate": 0.1, "SEED": 1}},
     "; did you mean 'train.learning_rate' for 'train.lerning_rate', "
     "'train.seed' for 'train.SEED'?"),
])
def test_unknown_keys_get_a_did_you_mean(raw, hint):
    with pytest.raises(ParamsError) as err:
        params_from_dict(raw)
    assert str(err.value).startswith("unknown key(s) ")
    assert str(err.value).endswith(hint)


def test_an_unknown_key_like_no_known_one_gets_no_guess():
    with pytest.raises(ParamsError) as err:
        params_from_dict({"train": {"zzz": 1}})
    assert "did you mean" not in str(err.value)


def test_the_domain_lists_come_from_their_owners():
    """sample.classes, train.augmentations and export.tflite accept exactly their owners' lists."""
    from pipeline.data.shapes import SHAPES
    from pipeline.odapi.augmentations import AUGMENTATIONS
    from pipeline.odapi.tflite_precisions import TFLITE_PRECISIONS

    params = params_from_dict({"sample": {"classes": list(SHAPES)},
                               "train": {"augmentations": list(AUGMENTATIONS)},
                               "export": {"tflite": list(TFLITE_PRECISIONS)}})
    assert params.train.augmentations == AUGMENTATIONS
    with pytest.raises(ParamsError, match=r"allowed: \['none', 'random_horizontal_flip'"):
        params_from_dict({"train": {"augmentations": ["random_mixup"]}})


def test_check_params_does_not_import_tensorflow():
    """``python -m pipeline check-params`` validates in a second, without TensorFlow (nor the
    OD API, Beam or MLflow): params reads its lists from light modules of their owners."""
    # cli.main, not `python -m pipeline`: that entry point ends the process when done.
    script = ("import sys\n"
              "from pipeline import cli\n"
              "assert cli.main(['check-params', '--params', sys.argv[1]]) == 0\n"
              "heavy = ('tensorflow', 'object_detection', 'apache_beam', 'mlflow')\n"
              "print(sorted(name for name in heavy if name in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", script, str(ROOT / "params.yaml")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"{ROOT / 'params.yaml'}: valid", "[]"]


def test_invalid_yaml_is_a_params_error(tmp_path):
    (tmp_path / "p.yaml").write_text("train: [unclosed")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(tmp_path / "p.yaml")


def test_params_built_in_code_are_validated_with_the_same_one_line_errors():
    """Building a section in code (as convert does with replace(params.data, root=...)) checks
    it as loading does, and fails with a ParamsError, not pydantic's multi-line report."""
    import dataclasses

    from pipeline.core.params import DataParams, SampleParams, TrainParams

    with pytest.raises(ParamsError) as err:
        SampleParams(num_images=8)
    assert str(err.value) == "SampleParams.num_images must be in [10, 100000], got 8"
    with pytest.raises(ParamsError, match=r"^data\.root must be a dataset folder, not the fil"):
        dataclasses.replace(DataParams(), root="/")
    with pytest.raises(ParamsError, match=r"^train\.warmup_steps must be smaller"):
        TrainParams(num_steps=5)


def test_params_objects_are_frozen():
    params = Params()
    with pytest.raises(AttributeError):
        params.train.batch_size = 3


def test_dataclass_defaults_match_the_shipped_params_file():
    """Params() documents the same defaults as params.yaml (except paths a user edits)."""
    assert load_params(ROOT / "params.yaml") == Params()


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
    import annotated_types

    for section, section_field in Params.__pydantic_fields__.items():
        for name, info in section_field.annotation.__pydantic_fields__.items():
            if info.annotation is float:
                kinds = {type(m) for m in info.metadata}
                assert {annotated_types.Ge, annotated_types.Le} <= kinds, f"{section}.{name}"


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
                                    "PortableRunner", "PrismRunner", "dask",
                                    "apache_beam.runners.direct.direct_runner.DirectRunner"])
def test_known_beam_runners_and_class_paths_are_accepted(runner):
    assert params_from_dict({"convert": {"runner": runner}}).convert.runner == runner


@pytest.mark.parametrize("runner", ["DirectRuner", "", " ", "directrunner", "Direct Runner",
                                    "my.module.", ".Runner"])
def test_unknown_beam_runners_are_refused(runner):
    with pytest.raises(ParamsError) as err:
        params_from_dict({"convert": {"runner": runner}})
    assert str(err.value) == ("convert.runner must be one of ['DirectRunner', 'DataflowRunner', "
                              "'FlinkRunner', 'SparkRunner', 'PortableRunner', 'PrismRunner', 'dask'] or "
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
                           "outputs ['models/exported', 'models/pipeline.config', "
                           "'models/pretrained', 'models/train']"),
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


@pytest.mark.parametrize("stage", ["sample", "check-params", "report"])
def test_a_missing_dataset_root_stops_every_stage_before_any_work(stage, tmp_path, capsys):
    """Under `dvc repro` the sample stage runs first: its params check names data.root, before
    DVC's own "missing dependency" error for convert."""
    from pipeline.cli import main

    params = tmp_path / "params.yaml"
    params.write_text(f"data:\n  root: {tmp_path / 'my_dataset'}\n")
    out = tmp_path / "out"
    output = ["--output", str(out)] if stage == "sample" else []
    assert main([stage, "--params", str(params), *output]) == 2
    assert capsys.readouterr().err == (
        f"error: bad params ({params}): data.root {str(tmp_path / 'my_dataset')!r} does not exist "
        f"(from {Path.cwd()}); set data.root to your dataset folder, or 'data/sample' for the "
        "built-in sample\n")
    assert not out.exists()


def test_the_sample_folder_may_not_exist_yet_and_other_roots_must_be_folders(monkeypatch,
                                                                             tmp_path):
    monkeypatch.chdir(tmp_path)  # no data/sample here: the sample stage writes it later
    for root in ("data/sample", "./data/sample", str(ROOT / "data" / "sample")):
        assert params_from_dict({"data": {"root": root}}).data.root == root
    (tmp_path / "file.json").write_text("{}")
    with pytest.raises(ParamsError, match="^data.root 'file.json' is not a folder"):
        params_from_dict({"data": {"root": "file.json"}})


def test_check_params_command_validates_without_doing_work(tmp_path, capsys):
    from pipeline.cli import main

    assert main(["check-params", "--params", str(ROOT / "params.yaml")]) == 0
    assert capsys.readouterr().out == f"{ROOT / 'params.yaml'}: valid\n"
    (tmp_path / "p.yaml").write_text("train: {}\ntrain: {}\n")
    assert main(["check-params", "--params", str(tmp_path / "p.yaml")]) == 2
    assert "duplicate key 'train'" in capsys.readouterr().err


# --- values configure derives from the data (issue 18) -----------------------------------------


def test_a_param_is_pinned_unless_its_value_asks_for_derivation():
    assert pinned(ModelParams(), "image_size") is None  # 0: derived from the data
    assert pinned(ModelParams(image_size=320), "image_size") == 320
    assert pinned(ModelParams(), "anchor_aspect_ratios") is None
    ratios = ModelParams(anchor_aspect_ratios=(0.5, 1.0))
    assert pinned(ratios, "anchor_aspect_ratios") == (0.5, 1.0)
    assert pinned(TrainParams(), "max_boxes") is None
    # num_steps is derived (from train.epochs) only when 0; its default 1600 is a value.
    assert pinned(TrainParams(), "num_steps") == 1600
    assert pinned(TrainParams(num_steps=0), "num_steps") is None
    with pytest.raises(KeyError, match="TrainParams.batch_size is not derived"):
        pinned(TrainParams(), "batch_size")


def test_num_steps_0_defers_the_warmup_and_freeze_checks_to_configure():
    params = params_from_dict({"train": {"num_steps": 0, "warmup_steps": 80}})
    assert (params.train.num_steps, params.train.epochs) == (0, 32)


@pytest.mark.parametrize("raw, message", [
    ({"model": {"anchor_aspect_ratios": [0.05]}}, "model.anchor_aspect_ratios must be []"),
    ({"model": {"anchor_aspect_ratios": [1, 1]}}, "distinct widths/heights in [0.1, 10]"),
    ({"model": {"anchor_min_size": 2}}, "model.anchor_min_size must be 0 (derived"),
    ({"train": {"epochs": 0}}, "train.epochs must be in [1, 100000], got 0"),
])
def test_bad_derivable_params_are_refused(raw, message):
    with pytest.raises(ParamsError) as err:
        params_from_dict(raw)
    assert message in str(err.value)
