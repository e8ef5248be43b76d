"""Training scalars as MLflow metrics: readable names, pycocotools' -1 left out."""
from __future__ import annotations

import argparse

import pytest
import tensorflow as tf

from pipeline.core.params import Params
from pipeline.tracking import journal as tracking
from pipeline.tracking.metrics import readable_name, tracked_points


@pytest.mark.parametrize("tag, name", [
    ("DetectionBoxes_Precision/mAP", "map"),
    ("DetectionBoxes_Precision/mAP@.50IOU", "map_50"),
    ("DetectionBoxes_Precision/mAP@.75IOU", "map_75"),
    ("DetectionBoxes_Precision/mAP (small)", "map_small"),
    ("DetectionBoxes_Recall/AR@1", "mar_1"),
    ("DetectionBoxes_Recall/AR@100", "mar_100"),
    ("DetectionBoxes_Recall/AR@100 (large)", "mar_large"),
    ("Loss/total_loss", "loss/total"),
    ("Loss/localization_loss", "loss/localization"),
    ("learning_rate", "learning_rate"),
    ("DetectionBoxes_PerformanceByCategory/mAP/a@b", "DetectionBoxes_PerformanceByCategory/mAP/a_b"),
])
def test_metric_names_match_the_reports(tag, name):
    assert readable_name(tag) == name


def test_pycocotools_minus_one_is_not_a_metric_point():
    curves = {"DetectionBoxes_Precision/mAP (small)": [(10, -1.0), (20, 0.25)],
              "DetectionBoxes_Recall/AR@100": [(10, 0.0)],
              "Loss/total_loss": [(10, -1.0)]}  # a loss may be anything: kept
    assert tracked_points("eval", curves) == [("eval/map_small", 20, 0.25),
                                              ("eval/mar_100", 10, 0.0),
                                              ("eval/loss/total", 10, -1.0)]


def test_the_training_run_records_no_sentinel_and_readable_names(tmp_path, monkeypatch):
    from pipeline.stages.train import JournalCallbacks

    with tf.summary.create_file_writer(str(tmp_path / "eval")).as_default():
        for name, value in (("DetectionBoxes_Precision/mAP (small)", -1.0),
                            ("DetectionBoxes_Precision/mAP@.50IOU", 0.5),
                            ("Loss/total_loss", 1.5)):
            tf.summary.scalar(name, value, step=10)
    journal = tracking.RunJournal(Params().mlflow, tmp_path)
    monkeypatch.setattr(journal, "send", lambda: True)  # no tracking store needed
    JournalCallbacks(journal, argparse.Namespace(model_dir=tmp_path), Params()).on_evaluation(
        10, None)
    assert {(r["key"], r["value"]) for r in journal.records()} == {("eval/map_50", 0.5),
                                                                    ("eval/loss/total", 1.5)}
