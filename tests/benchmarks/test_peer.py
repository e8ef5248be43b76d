"""benchmarks/peer.py and peer_yolo.py without torch or training: the arguments, YOLO's
detections as COCO results scored by the project's code, the table, the peer's thread setup."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.evaluation.coco import compute_metrics
from tests.paths import load_script


@pytest.fixture(scope="module")
def peer():
    return load_script("benchmarks/peer.py")


@pytest.fixture(scope="module")
def peer_yolo():
    return load_script("benchmarks/peer_yolo.py")


def test_arguments_and_params_overrides(peer) -> None:
    args = peer.parse_args(["--datasets", "bccd", "--yolo-sizes", "320", "--ours-params",
                            "train.num_steps=60", "train.augmentations=[random_horizontal_flip]",
                            "data.classes=[]", "--budget-seconds", "90"])
    assert args.datasets == ["bccd"] and args.yolo_sizes == [320] and args.budget_seconds == 90
    assert args.ours_params == {"train": {"num_steps": 60,
                                          "augmentations": ["random_horizontal_flip"]},
                                "data": {"classes": []}}
    defaults = peer.parse_args([])
    assert defaults.datasets == ["sample", "bccd"] and defaults.yolo_sizes == [256, 320]
    assert defaults.budget_seconds is None and defaults.ours_params == {}
    for bad in ("num_steps=60", "train.num_steps", ".x=1"):
        with pytest.raises(SystemExit, match="SECTION.KEY=VALUE"):
            peer.parse_args(["--ours-params", bad])
    # The dataset's data section, then the user's overrides on top.
    assert peer.merged(peer.DATASETS["bccd"], {"data": {"classes": ["RBC"]}})["data"] == {
        "format": "voc", "root": str(peer.BCCD), "classes": ["RBC"]}


GROUNDTRUTH = {
    "images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 80},
               {"id": 2, "file_name": "b.jpg", "width": 100, "height": 80}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10.0, 20.0, 6.0, 5.0], "area": 30.0,
         "iscrowd": 0},
        {"id": 2, "image_id": 2, "category_id": 2, "bbox": [50.0, 40.0, 30.0, 20.0],
         "area": 600.0, "iscrowd": 0}],
    "categories": [{"id": 1, "name": "Platelets"}, {"id": 2, "name": "RBC"}],
}
#: The writer's images (path in the YOLO dataset -> the file name the report gives them).
SOURCES = {"images/test/a.jpg": "a.jpg", "images/test/b.jpg": "b.jpg",
           "images/test/dropped.jpg": "dropped.jpg"}


def yolo_result(shift: float = 0.0) -> dict:
    """peer_yolo.py's result: exact boxes as [x1, y1, x2, y2] (+ ``shift`` pixels)."""
    return {"names": {"0": "Platelets", "1": "RBC"}, "detections": {
        "images/test/a.jpg": [[10 + shift, 20 + shift, 16 + shift, 25 + shift, 0.9, 0]],
        "images/test/b.jpg": [[50, 40, 80, 60, 0.8, 1], [0, 0, 5, 5, 0.1, 0]],
        "images/test/dropped.jpg": [[1, 1, 2, 2, 0.5, 1]]}}


def test_yolo_detections_become_coco_results_scored_by_the_project(peer) -> None:
    detections = peer.yolo_detections(yolo_result(), SOURCES, GROUNDTRUTH)
    assert {"image_id": 1, "category_id": 1, "bbox": [10, 20, 6, 5], "score": 0.9} in detections
    assert len(detections) == 3  # the image not in the ground truth is left out
    metrics = compute_metrics(GROUNDTRUTH, detections)
    assert metrics["map"] == pytest.approx(1.0) and metrics["map_75"] == pytest.approx(1.0)
    # A one-pixel offset on a 6 x 5 box costs AP75: the box convention matters.
    shifted = compute_metrics(GROUNDTRUTH, peer.yolo_detections(yolo_result(1.0), SOURCES,
                                                                GROUNDTRUTH))
    assert shifted["per_class"]["Platelets"]["ap"] < 0.5


def test_missing_images_and_unknown_classes_stop_the_comparison(peer) -> None:
    result = yolo_result()
    del result["detections"]["images/test/b.jpg"]
    with pytest.raises(SystemExit, match="1 test images have no YOLO prediction"):
        peer.yolo_detections(result, SOURCES, GROUNDTRUTH)
    result = {**yolo_result(), "names": {"0": "Platelets", "1": "WBC"}}
    with pytest.raises(SystemExit, match=r"YOLO classes \['WBC'\]"):
        peer.yolo_detections(result, SOURCES, GROUNDTRUTH)


def test_table_and_disagreement_lines(peer) -> None:
    ours = {"side": "ours", "image_size": 256, "train_seconds": 337.4, "map": 0.4361,
            "map_50": 0.761, "map_75": 0.452, "ap50_per_class": {"RBC": 0.8, "Platelets": None},
            "latency_ms": 11.12, "tflite_latency_ms": 5.2, "model_mb": 9.5, "tflite_mb": 2.61,
            "report_metrics": {"map": 0.4361, "map_50": 0.76, "map_75": 0.452}}
    yolo = {"side": "yolo11n", "image_size": 320, "train_seconds": 330.0, "map": 0.409,
            "map_50": 0.611, "map_75": 0.507, "ap50_per_class": {"RBC": 0.9, "Platelets": 0.072},
            "latency_ms": 9.7, "model_mb": 5.41}
    lines = peer.table("bccd", [ours, yolo]).splitlines()
    assert lines[0] == "bccd:" and lines[1].split()[:3] == ["side", "size", "train"]
    assert lines[2].split() == ["ours", "256", "337", "0.436", "0.761", "0.452", "RBC", "0.800",
                                "Platelets", "-", "11.1", "(tflite", "5.2)", "9.50", "(tflite",
                                "2.61)"]
    assert lines[3].split() == ["yolo11n", "320", "330", "0.409", "0.611", "0.507", "RBC",
                                "0.900", "Platelets", "0.072", "9.7", "5.41"]
    assert lines[2].index("0.436") == lines[3].index("0.409")  # aligned columns
    assert peer.agreement(ours) == [
        "  ours: map_50 re-scored 0.761 vs the report stage's 0.76"]


def test_peer_threads_and_offline_environment(peer_yolo) -> None:
    environ = {"PATH": "/bin", "OMP_NUM_THREADS": "1"}
    env = peer_yolo.thread_env(environ, 2, Path("/cfg"))
    assert env == {"PATH": "/bin", "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2",
                   "YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "0", "YOLO_CONFIG_DIR": "/cfg"}
    assert environ["OMP_NUM_THREADS"] == "1"  # the caller's mapping is left alone
    args = peer_yolo.parse_args(["--data", "d.yaml", "--imgsz", "320", "--budget-seconds", "60",
                                 "--work", "w", "--out", "o.json"])
    assert (args.threads, args.batch, args.split) == (2, 16, "test")
