"""A miniature pipeline through real `dvc repro`: every stage real, outputs checked for real."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.paths import ROOT

MINI_PARAMS = {
    "sample": {"num_images": 24, "image_size": 128, "max_objects": 3, "val_fraction": 0.2,
               "test_fraction": 0.2, "seed": 1},
    "model": {"image_size": 128},
    # checkpoint_every_n > num_steps: only the final-step shim can write the last checkpoint.
    "train": {"batch_size": 4, "num_steps": 12, "warmup_steps": 2, "learning_rate": 0.02,
              "checkpoint_every_n": 1000},
}


def make_project(directory: Path, params: dict) -> Path:
    """A copy of the product (dvc.yaml, code, templates) with its own params and DVC repo."""
    directory.mkdir(parents=True)
    shutil.copy(ROOT / "dvc.yaml", directory)
    for name in ("pipeline", "configs"):
        shutil.copytree(ROOT / name, directory / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    merged = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in params.items():
        merged[section].update(values)
    merged["mlflow"]["tracking_uri"] = f"sqlite:///{directory / 'mlflow.db'}"
    (directory / "params.yaml").write_text(yaml.safe_dump(merged))
    run(["dvc", "init", "--no-scm", "-q"], directory)
    return directory


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    if check and result.returncode != 0:
        raise AssertionError(f"{cmd} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


GIT_IDENTITY = ["-c", "user.name=test", "-c", "user.email=test@example.com"]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """The miniature project after a full `dvc repro`, committed to git (as a user's would be;
    `dvc exp run` needs it)."""
    project = make_project(tmp_path_factory.mktemp("e2e") / "proj", MINI_PARAMS)
    run(["git", "init", "-q"], project)
    run(["dvc", "config", "core.no_scm", "false"], project)
    (project / ".gitignore").write_text("mlflow.db\nmlruns/\n")
    assert stages_run(run(["dvc", "repro"], project).stdout) == {
        "sample", "convert", "pretrained", "configure", "train", "export", "report"}
    run(["git", "add", "-A"], project)
    run(["git", *GIT_IDENTITY, "commit", "-qm", "baseline"], project)
    return project


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


pytestmark = pytest.mark.slow


def test_tfrecords_decode_with_the_od_api_decoder(project):
    from pipeline.core import compat

    compat.apply()
    import tensorflow as tf
    from object_detection.data_decoders.tf_example_decoder import TfExampleDecoder

    decoder = TfExampleDecoder(label_map_proto_file=str(project / "data/tfrecords/label_map.pbtxt"))
    files = sorted(str(p) for p in (project / "data/tfrecords").glob("train.tfrecord-*"))
    decoded = [decoder.decode(r) for r in tf.data.TFRecordDataset(files)]
    assert len(decoded) == 14  # 24 images - 20% val - 20% test (rounded)
    for tensors in decoded:
        boxes = tensors["groundtruth_boxes"].numpy()
        classes = tensors["groundtruth_classes"].numpy()
        assert tensors["image"].shape == (128, 128, 3)
        assert boxes.shape == (len(classes), 4) and 1 <= len(classes) <= 3
        assert ((boxes >= 0) & (boxes <= 1)).all()
        assert set(classes) <= {1, 2, 3}


def test_pipeline_config_parses_with_the_data_and_params(project):
    from pipeline.core import compat

    compat.apply()
    from object_detection.utils import config_util

    configs = config_util.get_configs_from_pipeline_file(str(project / "models/pipeline.config"))
    assert configs["model"].ssd.num_classes == 3
    assert configs["train_config"].batch_size == 4
    assert configs["model"].ssd.image_resizer.fixed_shape_resizer.height == 128


def test_the_final_step_is_checkpointed(project):
    import tensorflow as tf

    latest = tf.train.latest_checkpoint(str(project / "models/train"))
    assert tf.train.load_variable(latest, "step/.ATTRIBUTES/VARIABLE_VALUE") == 12


def test_saved_model_loads_and_returns_detections_of_the_right_shapes(project):
    import numpy as np
    import tensorflow as tf

    model = tf.saved_model.load(str(project / "models/exported/saved_model"))
    out = model.signatures["serving_default"](
        input_tensor=tf.constant(np.zeros((1, 128, 128, 3), np.uint8)))
    n = out["detection_scores"].shape[1]
    assert n > 0
    assert out["detection_boxes"].shape == (1, n, 4)
    assert out["detection_classes"].shape == (1, n)
    assert out["num_detections"].shape == (1,)


def test_metrics_are_numbers_in_unit_range(project):
    metrics = json.loads((project / "reports/metrics.json").read_text())
    keys = ["map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_100"]
    for key in keys:
        assert metrics[key] is None or 0.0 <= metrics[key] <= 1.0, key
    assert isinstance(metrics["map_50"], float)
    assert set(metrics["per_class"]) == {"circle", "square", "triangle"}
    assert 0 < metrics["latency_ms"]["p50"] <= metrics["latency_ms"]["p95"]


def test_one_training_run_holds_params_and_curves_its_report_run_the_test_metrics(project):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("object-detection")
    runs = client.search_runs([experiment.experiment_id], "tags.`pipeline.stage` = 'train'")
    assert len(runs) == 1
    run_data = runs[0].data
    assert run_data.params["train.batch_size"] == "4"
    assert run_data.params["model.name"] == "ssd_mobilenet_v2_fpnlite_cpu"
    assert "train/loss/total" in run_data.metrics
    assert runs[0].info.run_name == "ssd_mobilenet_v2_fpnlite_cpu on sample"
    assert not any(value < 0 for key, value in run_data.metrics.items() if "/ma" in key)
    page = (project / "reports/report.html").read_text()
    assert run_data.tags["git.commit"] in page and runs[0].info.run_id in page
    assert "<h2>Training (train_curves.csv, eval_curves.csv)</h2>" in page
    artifacts = {a.path for a in client.list_artifacts(runs[0].info.run_id)}
    assert {"pipeline.config", "label_map.pbtxt", "data_report.json"} <= artifacts
    # export and report: runs nested under the training run, the newest named by a tag
    report_run = client.get_run(run_data.tags["pipeline.latest.report"])
    export_run = client.get_run(run_data.tags["pipeline.latest.export"])
    for child in (report_run, export_run):
        assert child.data.tags["mlflow.parentRunId"] == runs[0].info.run_id
    metrics = json.loads((project / "reports/metrics.json").read_text())
    assert report_run.data.metrics["test.map_50"] == pytest.approx(metrics["map_50"])
    report_files = {a.path for a in client.list_artifacts(report_run.info.run_id, "report")}
    assert "report/metrics.json" in report_files
    assert "export.max_score_difference" in export_run.data.metrics


def test_one_dvc_repro_is_one_top_level_run_with_every_stage_that_ran_nested(project):
    """Before, sample, convert and configure recorded top-level runs of their own: one
    `dvc repro` left 4 top-level runs."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("object-detection").experiment_id
    runs = client.search_runs([experiment])
    [top] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert top.info.run_name == "ssd_mobilenet_v2_fpnlite_cpu on sample"
    assert top.data.tags["pipeline.stage"] == "train" and top.info.status == "FINISHED"
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == top.info.run_id]
    assert len(nested) == len(runs) - 1
    # every stage that ran but pretrained (it records no run) and train (the run itself)
    assert sorted(r.data.tags["pipeline.stage"] for r in nested) == [
        "configure", "convert", "export", "report", "sample"]


def test_second_repro_does_no_work(project):
    before = {p: p.stat().st_mtime_ns for p in (project / "models").rglob("*")}
    result = run(["dvc", "repro"], project)
    assert "Running stage" not in result.stdout
    assert "Data and pipelines are up to date" in result.stdout
    assert before == {p: p.stat().st_mtime_ns for p in (project / "models").rglob("*")}


def test_changing_a_param_reruns_only_the_stages_that_depend_on_it(project):
    params_file = project / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    try:
        params["export"]["input_type"] = "encoded_image_string_tensor"
        params_file.write_text(yaml.safe_dump(params))
        status = json.loads(run(["dvc", "status", "--json"], project).stdout)
        assert set(status) == {"export"}
        params["model"]["image_size"] = 96
        params_file.write_text(yaml.safe_dump(params))
        status = json.loads(run(["dvc", "status", "--json"], project).stdout)
        assert set(status) == {"configure", "export"}
    finally:
        params_file.write_text(original)


def test_bad_params_stop_dvc_repro_before_any_work(tmp_path):
    project = make_project(tmp_path / "bad", {"train": {"batch_size": "sixteen"}})
    result = run(["dvc", "repro"], project, check=False)
    assert result.returncode != 0
    assert "train.batch_size must be of type int, got 'sixteen' (str)" in result.stderr
    assert not (project / "data").exists()


def test_a_missing_dataset_root_is_named_before_any_stage_runs(tmp_path):
    """Before, the sample stage ran, then DVC failed on convert's missing dependency."""
    missing = tmp_path / "my_dataset"
    project = make_project(tmp_path / "bad", {"data": {"root": str(missing)}})
    result = run(["dvc", "repro"], project, check=False)
    assert result.returncode != 0
    assert f"data.root {str(missing)!r} does not exist" in result.stderr
    assert not (project / "data").exists()


# --- switching the model (runs last: it changes the project's outputs) -------------------------

OTHER_MODEL = "ssd_mobilenet_v2_320"


def test_switching_the_model_reruns_pretrained_configure_train_export_report_only(project,
                                                                                 monkeypatch):
    for var in ("AUTHOR", "COMMITTER"):  # dvc exp run commits the experiment
        monkeypatch.setenv(f"GIT_{var}_NAME", "test")
        monkeypatch.setenv(f"GIT_{var}_EMAIL", "test@example.com")
    sample_before = (project / "data/sample").stat().st_mtime_ns
    status = json.loads(run(["dvc", "status", "--json", "configure"], project).stdout)
    assert status == {}
    result = run(["dvc", "exp", "run", "-S", f"model.name={OTHER_MODEL}"], project)
    assert stages_run(result.stdout) == {"pretrained", "configure", "train", "export", "report"}
    assert (project / "data/sample").stat().st_mtime_ns == sample_before
    config = (project / "models/pipeline.config").read_text()
    assert "ssd_mobilenet_v2_keras" in config and "ssd_mobilenet_v2_fpn_keras" not in config

    shown = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    names = {params_of(row).get("model", {}).get("name") for row in flatten(shown)}
    assert {"ssd_mobilenet_v2_fpnlite_cpu", OTHER_MODEL} <= names


def test_the_new_train_run_logs_the_resolved_pipeline_config(project):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("object-detection")
    runs = client.search_runs([experiment.experiment_id], "tags.`pipeline.stage` = 'train'",
                              order_by=["attributes.start_time DESC"])
    assert [r.data.tags["model.name"] for r in runs] == [OTHER_MODEL,
                                                         "ssd_mobilenet_v2_fpnlite_cpu"]
    logged = Path(client.download_artifacts(runs[0].info.run_id, "pipeline.config",
                                            str(project / "downloaded")))
    assert logged.read_text() == (project / "models/pipeline.config").read_text()


def flatten(shown) -> list[dict]:
    """Every row (baseline and experiments) of `dvc exp show --json`, whatever its nesting."""
    rows = []
    for entry in shown if isinstance(shown, list) else [shown]:
        rows.append(entry)
        for child in entry.get("experiments") or []:
            rows.extend(flatten(child.get("revs") or [child]))
    return rows


def params_of(row: dict) -> dict:
    data = (row.get("data") or {}).get("params") or {}
    return (data.get("params.yaml") or {}).get("data") or {}
