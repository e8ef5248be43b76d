"""What produced a result: dataset hash, git commit, run; the report's provenance rows."""
from __future__ import annotations

from pathlib import Path

from pipeline.core.params import Params
from pipeline.tracking import journal as tracking
from pipeline.tracking import provenance


def test_dataset_hash_comes_from_dvc_lock(tmp_path):
    lock = tmp_path / "dvc.lock"
    lock.write_text("schema: '2.0'\nstages:\n  convert:\n    outs:\n    - path: data/tfrecords\n"
                    "      md5: 0123abc.dir\n")
    assert provenance.dataset_hash(lock, Path("data/tfrecords")) == "0123abc.dir"
    assert provenance.dataset_hash(lock, Path("data/other")) == "unknown"
    assert provenance.dataset_hash(tmp_path / "none.lock", Path("data/tfrecords")) == "unknown"


def test_report_provenance_names_model_params_dataset_commit_run_and_date(tmp_path,
                                                                         monkeypatch):
    monkeypatch.chdir(tmp_path)  # dvc.lock is read from the working directory
    Path("dvc.lock").write_text("stages:\n  convert:\n    outs:\n    - path: data/tfrecords\n"
                                "      md5: 0123abc.dir\n")
    model_dir = tmp_path / "exported"
    model_dir.mkdir()
    tracking.write_run_file(model_dir, "run0123")
    monkeypatch.setattr(provenance, "git_commit", lambda: "c0ffee")
    rows = dict(provenance.report_provenance(Params(), model_dir, Path("data/tfrecords")))
    assert set(rows) == {"model", "key params", "dataset", "git commit", "MLflow", "date"}
    assert rows["model"].startswith("ssd_mobilenet_v2_fpnlite_cpu (template)")
    assert "train.batch_size 8" in rows["key params"]
    assert "0123abc.dir" in rows["dataset"] and rows["git commit"] == "c0ffee"
    assert "run0123" in rows["MLflow"] and rows["date"].startswith("20")
