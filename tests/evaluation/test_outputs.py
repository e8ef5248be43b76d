"""pipeline/evaluation/outputs.py: the pictures folder is a DVC output of the report stage."""
from __future__ import annotations

from pathlib import Path

from pipeline.core import layout
from pipeline.evaluation.outputs import Pictures, draw_pictures


def test_no_picture_asked_still_creates_the_pictures_folder(tmp_path: Path) -> None:
    # report.sample_images: 0 and worst_images: 0 are valid params; `dvc repro` failed with
    # "output 'reports/images' does not exist" when the folder was only made by a drawing.
    pictures = Pictures(truths=[], detections=[], images=[], categories={1: "cell"},
                        num_samples=0, num_worst=0, score_threshold=0.5)
    folder = tmp_path / layout.REPORT_IMAGES_DIR
    assert draw_pictures(folder, pictures, errors={}) == ([], [])
    assert folder.is_dir() and not any(folder.iterdir())
