"""Stage ``convert``: the command line (options, one-line errors, output folder safety).

The conversion itself is tested in tests/data/ (checks, beam, health, conversion, readers).
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.core.files import MARKER
from pipeline.core.params import SampleParams
from pipeline.core.records import hash_split
from pipeline.data.sample import generate

from tests.data.helpers import decode_records, save


def test_cli_flat_voc_folders_split_by_hash(tmp_path: Path, monkeypatch, capsys) -> None:
    """``python -m pipeline convert --format voc --images DIR --annotations DIR --output DIR``."""
    from pipeline.cli import main

    images, xmls = tmp_path / "pics", tmp_path / "labels"
    for folder in (images, xmls):
        folder.mkdir()
    for index in range(12):
        save(images / f"p{index}.jpg")
        (xmls / f"p{index}.xml").write_text(
            f"<annotation><filename>p{index}.jpg</filename><size><width>40</width>"
            "<height>30</height></size><object><name>cat</name><bndbox><xmin>1</xmin>"
            "<ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object></annotation>")
    params = tmp_path / "params.yaml"
    params.write_text("data:\n  val_fraction: 0.25\n  test_fraction: 0.25\n")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    out = tmp_path / "out"
    assert main(["convert", "--params", str(params), "--format", "voc", "--images", str(images),
                 "--annotations", str(xmls), "--output", str(out)]) == 0
    report = json.loads((out / "data_report.json").read_text())
    expected = Counter(hash_split(f"p{i}", 0.25, 0.25) for i in range(12))
    assert {s: report["splits"][s]["images"] for s in ("train", "val", "test")} == {
        s: expected[s] for s in ("train", "val", "test")}
    assert set(decode_records(sorted(out.glob("*.tfrecord-*")))) == {f"p{i}" for i in range(12)}

    with pytest.raises(SystemExit):
        main(["convert", "--help"])
    help_text = capsys.readouterr().out
    assert "--images" in help_text and "--annotations" in help_text and "--input" in help_text


def test_cli_bad_dataset_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    from pipeline.cli import main

    params = tmp_path / "params.yaml"
    params.write_text("{}\n")
    assert main(["convert", "--params", str(params), "--input", str(tmp_path / "nope"),
                 "--output", str(tmp_path / "out")]) == 1
    assert "error: convert: dataset root" in capsys.readouterr().err


def test_output_never_replaces_an_input_or_a_foreign_folder(tmp_path: Path, monkeypatch,
                                                            capsys) -> None:
    """``--output`` equal to the dataset, containing it, or holding someone's files: refused
    with one line before any work, nothing deleted; an earlier output of ours is replaced."""
    from pipeline.cli import main

    dataset = tmp_path / "project" / "voc"
    generate(SampleParams(num_images=10), dataset)  # the smallest valid sample
    params = tmp_path / "params.yaml"
    params.write_text("{}\n")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    files_before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for output in (dataset, dataset.parent, foreign):
        code = main(["convert", "--params", str(params), "--input", str(dataset),
                     "--output", str(output)])
        err = capsys.readouterr().err
        assert code == 1 and ("refusing" in err or "would replace the input" in err), err
        assert len(err.strip().splitlines()) == 1
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == files_before
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    out = tmp_path / "tfrecords"
    for _ in range(2):  # the second run replaces the first one's (marked) output
        assert main(["convert", "--params", str(params), "--input", str(dataset),
                     "--output", str(out)]) == 0
    assert (out / MARKER).is_file() and (out / "data_report.json").is_file()


def test_cli_yolo_labels_next_to_the_images(tmp_path: Path, monkeypatch) -> None:
    """``--format yolo --images DIR --annotations DIR`` with labelImg's YOLO mode: labels and
    classes.txt in the images folder."""
    from pipeline.cli import main

    folder = tmp_path / "shots"
    folder.mkdir()
    (folder / "classes.txt").write_text("cat\ndog\n")
    for index in range(6):
        Image.new("RGB", (40, 30), (index * 40, 0, 0)).save(folder / f"s{index}.jpg")
        (folder / f"s{index}.txt").write_text(f"{index % 2} 0.5 0.5 0.25 0.5\n")
    params = tmp_path / "params.yaml"
    params.write_text("data:\n  val_fraction: 0.0\n  test_fraction: 0.0\n")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    out = tmp_path / "out"
    assert main(["convert", "--params", str(params), "--format", "yolo", "--images",
                 str(folder), "--annotations", str(folder), "--output", str(out)]) == 0
    report = json.loads((out / "data_report.json").read_text())
    assert (report["format"], report["images"], report["issue_counts"]) == ("yolo", 6, {})
    assert report["splits"]["train"]["objects_per_class"] == {"cat": 3, "dog": 3}
    decoded = decode_records(sorted(out.glob("train.tfrecord-*")))
    assert set(decoded) == {f"s{i}" for i in range(6)}
    np.testing.assert_allclose(decoded["s0"]["boxes"], [[0.25, 0.375, 0.75, 0.625]], atol=1e-6)


def test_convert_process_never_imports_tensorflow(tmp_path: Path) -> None:
    """The whole stage (Beam graph, checks, Example building, report, MLflow run) runs without
    TensorFlow: importing it costs seconds of start-up in the driver and every Beam worker."""
    import os
    import subprocess
    import sys

    from tests.paths import ROOT

    dataset = tmp_path / "voc"
    generate(SampleParams(num_images=10), dataset)
    (tmp_path / "params.yaml").write_text("{}\n")
    script = (
        "import json, sys\n"
        "from pipeline.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "print(json.dumps({'code': code, 'tensorflow': sorted(m for m in sys.modules\n"
        "    if m.split('.')[0] == 'tensorflow')}))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    done = subprocess.run(
        [sys.executable, "-c", script, "convert", "--params", str(tmp_path / "params.yaml"),
         "--input", str(dataset), "--output", str(tmp_path / "out")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"code": 0, "tensorflow": []}
