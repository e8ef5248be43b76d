"""Stage ``report`` end to end on tiny TFRecords and a tiny real SavedModel (no OD API model).

The fake detector knows each test image by its height (image i is BASE_HEIGHT + STEP*i pixels
high) and returns that image's ground-truth boxes, so a correct pipeline must score mAP 1.0;
any mix-up of images, box order or coordinates shows up as a lower score.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from pipeline.odapi import detector
from pipeline import cli
from pipeline.evaluation import confusion
from pipeline.stages import report
from pipeline.evaluation import outputs as report_outputs
from pipeline.core.errors import PipelineError
from pipeline.core.params import ReportParams

BASE_HEIGHT, STEP, WIDTH = 48, 8, 80
CLASSES = {1: "circle", 2: "square"}
MAX_DETECTIONS = 4  # the fake model pads its outputs to this, like the OD API's exporter
# Per image: (normalised [ymin, xmin, ymax, xmax], class id). Image 3 has no objects.
OBJECTS = [
    [([0.1, 0.1, 0.6, 0.5], 1), ([0.5, 0.5, 0.9, 0.95], 2)],
    [([0.2, 0.3, 0.7, 0.8], 2)],
    [([0.0, 0.0, 0.5, 0.5], 1), ([0.5, 0.0, 1.0, 0.5], 1), ([0.1, 0.6, 0.4, 0.9], 2)],
    [],
    [([0.25, 0.25, 0.75, 0.75], 1)],
]


def _example(index: int, objects: list) -> bytes:
    height = BASE_HEIGHT + STEP * index
    image = np.random.default_rng(index).integers(0, 255, (height, WIDTH, 3), dtype=np.uint8)
    boxes = np.array([b for b, _ in objects], np.float32).reshape(-1, 4)
    floats = lambda v: tf.train.Feature(float_list=tf.train.FloatList(value=list(v)))  # noqa
    ints = lambda v: tf.train.Feature(int64_list=tf.train.Int64List(value=list(v)))  # noqa
    data = lambda v: tf.train.Feature(bytes_list=tf.train.BytesList(value=list(v)))  # noqa
    feature = {
        "image/encoded": data([tf.io.encode_jpeg(image).numpy()]),
        "image/height": ints([height]), "image/width": ints([WIDTH]),
        "image/filename": data([f"img{index}.jpg".encode()]),
        "image/source_id": data([str(index).encode()]),
        **{f"image/object/bbox/{k}": floats(boxes[:, i])
           for i, k in enumerate(("ymin", "xmin", "ymax", "xmax"))},
        "image/object/class/label": ints([c for _, c in objects]),
        "image/object/class/text": data([CLASSES.get(c, "?").encode() for _, c in objects]),
    }
    if index == 0:  # optional keys present in one record only
        feature["image/object/is_crowd"] = ints([0] * len(objects))
        feature["image/object/area"] = floats([1000.0] * len(objects))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _write_data(data_dir: Path, examples: list[bytes], shards: int = 2) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    for shard in range(shards):
        name = data_dir / f"test.tfrecord-{shard:05d}-of-{shards:05d}"
        with tf.io.TFRecordWriter(str(name)) as writer:
            for example in examples[shard::shards]:
                writer.write(example)
    label_map = "".join(f"item {{\n  id: {i}\n  name: '{n}'\n}}\n" for i, n in CLASSES.items())
    (data_dir / "label_map.pbtxt").write_text(label_map)
    return data_dir


class FakeDetector(tf.Module):
    """Returns the stored boxes of the image with this height, in the OD API's output format."""

    def __init__(self, objects: list, score: float = 0.9):
        super().__init__()
        boxes = np.zeros((len(objects), MAX_DETECTIONS, 4), np.float32)
        classes = np.ones((len(objects), MAX_DETECTIONS), np.float32)
        for i, image_objects in enumerate(objects):
            for k, (box, class_id) in enumerate(image_objects):
                boxes[i, k], classes[i, k] = box, class_id
        self.boxes, self.classes = tf.constant(boxes), tf.constant(classes)
        self.counts = tf.constant([float(len(o)) for o in objects])
        self.score = score

    def detect(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
        index = (tf.shape(image)[1] - BASE_HEIGHT) // STEP
        count = self.counts[index]
        scores = tf.where(tf.range(MAX_DETECTIONS, dtype=tf.float32) < count, self.score, 0.0)
        return {
            "detection_boxes": self.boxes[index][tf.newaxis],
            "detection_scores": scores[tf.newaxis],
            "detection_classes": self.classes[index][tf.newaxis],
            "num_detections": count[tf.newaxis],
        }


def _serving_function(module: FakeDetector, input_type: str):
    # The three input signatures of the OD API's exporter_main_v2.
    if input_type == "image_tensor":
        return tf.function(module.detect,
                           input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8)])

    def from_string(inputs):
        encoded = inputs[0]
        if input_type == "tf_example":
            spec = {"image/encoded": tf.io.FixedLenFeature([], tf.string)}
            encoded = tf.io.parse_single_example(encoded, spec)["image/encoded"]
        return module.detect(tf.io.decode_jpeg(encoded, channels=3)[tf.newaxis])

    return tf.function(from_string, input_signature=[tf.TensorSpec([1], tf.string)])


def _save_model(export_dir: Path, module: FakeDetector, input_type: str = "image_tensor") -> Path:
    module.serve = _serving_function(module, input_type)
    tf.saved_model.save(module, str(export_dir / "saved_model"),
                        signatures={"serving_default": module.serve})
    return export_dir


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    examples = [_example(i, objects) for i, objects in enumerate(OBJECTS)]
    return _write_data(tmp_path_factory.mktemp("data"), examples)


@pytest.fixture(scope="module")
def perfect_model(tmp_path_factory) -> Path:
    return _save_model(tmp_path_factory.mktemp("export"), FakeDetector(OBJECTS))


@pytest.fixture(scope="module")
def perfect_report(perfect_model, data_dir, tmp_path_factory) -> tuple[dict, Path]:
    output = tmp_path_factory.mktemp("reports")
    return report.evaluate(perfect_model, data_dir, output, ReportParams(warmup_images=2)), output


def test_ground_truth_boxes_score_one(perfect_report):
    metrics, _ = perfect_report
    assert metrics["map"] == pytest.approx(1.0)
    assert metrics["map_50"] == pytest.approx(1.0)
    assert metrics["mar_100"] == pytest.approx(1.0)
    assert set(metrics["per_class"]) == {"circle", "square"}
    assert metrics["num_images"] == len(OBJECTS)
    assert metrics["num_detections"] == sum(len(o) for o in OBJECTS)


def test_metrics_json_schema(perfect_report):
    metrics, output = perfect_report
    saved = json.loads((output / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    summary = ["map", "map_50", "map_75", "map_small", "map_medium", "map_large",
               "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large"]
    assert set(saved) == set(summary) | {"per_class", "latency_ms", "images_per_second",
                                         "num_images", "num_detections", "pascal_voc_map_50",
                                         "confusion"}
    for key in summary:
        assert saved[key] is None or 0.0 <= saved[key] <= 1.0, key
    for scores in saved["per_class"].values():
        assert set(scores) == {"ap", "ap50", "voc_ap50"}
        assert all(0.0 <= v <= 1.0 for v in scores.values())
    latency = saved["latency_ms"]
    assert set(latency) == {"p50", "p95", "mean"}
    assert 0 < latency["p50"] <= latency["p95"]
    assert saved["images_per_second"] == pytest.approx(1000 / latency["mean"])


def test_report_files(perfect_report):
    _, output = perfect_report
    groundtruth = json.loads((output / "groundtruth.json").read_text())
    assert [im["height"] for im in groundtruth["images"]] == [
        BASE_HEIGHT + STEP * i for i in (0, 2, 4, 1, 3)]  # shard 0 then shard 1
    assert len(json.loads((output / "detections.json").read_text())) == 7
    with (output / "per_class.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["class"] for r in rows] == ["circle", "square"]
    assert all(float(r["ap"]) == pytest.approx(1.0) for r in rows)
    assert (output / "plots" / "pr_curve.png").read_bytes()[:4] == b"\x89PNG"
    with (output / "plots" / "pr_curve.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 2 * 101  # 101 COCO recall points per class


@pytest.mark.parametrize("input_type", ["encoded_image_string_tensor", "tf_example"])
def test_string_input_models(input_type, data_dir, tmp_path):
    model = _save_model(tmp_path / "export", FakeDetector(OBJECTS), input_type)
    assert detector.Detector.load(model).input_type == input_type
    metrics = report.evaluate(model, data_dir, tmp_path / "out", ReportParams(warmup_images=0))
    assert metrics["map"] == pytest.approx(1.0)


def test_wrong_boxes_score_lower(data_dir, tmp_path):
    # Every box moved down by a quarter of the image: IoU <= 0.5 for most boxes.
    shifted = [[([b[0] + .25, b[1], b[2] + .25, b[3]], c) for b, c in o] for o in OBJECTS]
    model = _save_model(tmp_path / "export", FakeDetector(shifted))
    metrics = report.evaluate(model, data_dir, tmp_path / "out", ReportParams(warmup_images=0))
    assert metrics["map"] < 0.5
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["map"] == metrics["map"]


def test_missing_model_dir(data_dir, tmp_path):
    with pytest.raises(PipelineError, match="no SavedModel"):
        report.evaluate(tmp_path / "nothing", data_dir, tmp_path / "out")
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_no_test_records(perfect_model, tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(PipelineError, match="no test records"):
        report.evaluate(perfect_model, tmp_path / "data", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_empty_test_split(perfect_model, tmp_path):
    data = _write_data(tmp_path / "data", [], shards=1)
    with pytest.raises(PipelineError, match="test split is empty"):
        report.evaluate(perfect_model, data, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_class_missing_from_label_map(perfect_model, data_dir, tmp_path):
    data = _write_data(tmp_path / "data", [_example(0, [([0.1, 0.1, 0.5, 0.5], 7)])], shards=1)
    with pytest.raises(PipelineError, match=r"class id\(s\) \[7\]"):
        report.evaluate(perfect_model, data, tmp_path / "out")


def test_cli_prints_one_line_error_and_writes_nothing(perfect_model, tmp_path, capsys):
    (tmp_path / "params.yaml").write_text(
        f"report:\n  warmup_images: 1\n  registered_model: ''\n"
        f"mlflow:\n  tracking_uri: sqlite:///{tmp_path / 'mlflow.db'}\n")
    out = tmp_path / "out"
    code = cli.main(["report", "--params", str(tmp_path / "params.yaml"), "--model",
                     str(perfect_model), "--data", str(tmp_path / "missing"), "--output", str(out)])
    assert code == 1
    err = capsys.readouterr().err
    assert "error: report: data directory" in err and "Traceback" not in err
    assert not out.exists()


def test_cli_runs_the_stage(perfect_model, data_dir, tmp_path):
    (tmp_path / "params.yaml").write_text(
        f"report:\n  warmup_images: 1\n  registered_model: ''\n"
        f"mlflow:\n  tracking_uri: sqlite:///{tmp_path / 'mlflow.db'}\n")
    out = tmp_path / "out"
    code = cli.main(["report", "--params", str(tmp_path / "params.yaml"), "--model",
                     str(perfect_model), "--data", str(data_dir), "--output", str(out)])
    assert code == 0
    assert json.loads((out / "metrics.json").read_text())["num_images"] == len(OBJECTS)


def test_invalid_label_map(perfect_model, data_dir, tmp_path):
    data = _write_data(tmp_path / "data", [_example(0, OBJECTS[0])], shards=1)
    (data / "label_map.pbtxt").write_text("item { id: 1 name: 'circle' ")
    with pytest.raises(PipelineError, match="not a valid label map"):
        report.evaluate(perfect_model, data, tmp_path / "out")


def test_pascal_voc_map_from_the_od_api_evaluator(perfect_report):
    metrics, _ = perfect_report
    assert metrics["pascal_voc_map_50"] == pytest.approx(1.0)
    assert all(s["voc_ap50"] == pytest.approx(1.0) for s in metrics["per_class"].values())


def test_pascal_voc_map_drops_with_wrong_classes(data_dir, tmp_path):
    swapped = [[(b, 3 - c) for b, c in o] for o in OBJECTS]  # circle <-> square
    model = _save_model(tmp_path / "export", FakeDetector(swapped))
    metrics = report.evaluate(model, data_dir, tmp_path / "out", ReportParams(warmup_images=0))
    assert metrics["pascal_voc_map_50"] == pytest.approx(0.0)
    with (tmp_path / "out" / "plots" / "confusion_matrix.csv").open() as f:
        pairs = [(r["actual"], r["predicted"]) for r in csv.DictReader(f)]
    assert pairs.count(("circle", "square")) == 4 and pairs.count(("square", "circle")) == 3
    assert ("circle", "circle") not in pairs
    assert len(list((tmp_path / "out" / "images").glob("worst_*.png"))) == 4  # image 3 is empty


def test_confusion_matrix_of_a_perfect_model_is_diagonal(perfect_report):
    _, output = perfect_report
    with (output / "plots" / "confusion_matrix.csv").open() as f:
        pairs = [(r["actual"], r["predicted"]) for r in csv.DictReader(f)]
    assert sorted(pairs) == sorted([("circle", "circle")] * 4 + [("square", "square")] * 3)
    assert (output / "plots" / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"


def test_html_report_is_self_contained(perfect_report):
    _, output = perfect_report
    page = (output / "report.html").read_text()
    images = list((output / "images").glob("sample_*.png"))
    assert len(images) == len(OBJECTS)  # sample_images 6 > 5 test images
    assert not list((output / "images").glob("worst_*.png"))  # no errors, no worst images
    assert page.count("data:image/png;base64,") == 2  # the plots
    assert page.count("data:image/jpeg;base64,") == len(images)  # the pictures, scaled
    assert "src='http" not in page and "<script" not in page
    row = "<td>circle</td>" + "<td class='n'>1.000</td>" * 3
    assert row in page


def test_html_report_says_what_produced_it_and_shows_the_training_curves(perfect_model, data_dir,
                                                                         tmp_path):
    out = tmp_path / "reports"
    out.mkdir()
    (out / "train_curves.csv").write_text("step,Loss_total_loss,learning_rate\n10,2.0,0.1\n"
                                          "20,1.5,0.1\n")
    (out / "eval_curves.csv").write_text("step,map,map_50,val_loss\n20,0.3,0.6,1.7\n")
    about = [("git commit", "c0ffee"), ("MLflow", "training run run0123")]
    report.evaluate(perfect_model, data_dir, out, ReportParams(warmup_images=0), about)
    page = (out / "report.html").read_text()
    assert "<tr><th>git commit</th><td>c0ffee</td></tr>" in page
    assert "<td>training run run0123</td>" in page
    assert "<h2>Training (train_curves.csv, eval_curves.csv)</h2>" in page
    assert "alt='training curves'" in page


def test_per_class_markdown(perfect_report):
    _, output = perfect_report
    lines = (output / "per_class.md").read_text().splitlines()
    assert lines[0].startswith("| class |")
    assert lines[2] == "| circle | 1.000 | 1.000 | 1.000 |"


def test_saved_coco_files_rescore_to_the_reported_metrics(data_dir, tmp_path):
    """An independent pycocotools run on the saved JSON files gives metrics.json's numbers."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    shifted = [[([b[0] + .1, b[1], b[2] + .1, b[3]], c) for b, c in o] for o in OBJECTS]
    model = _save_model(tmp_path / "export", FakeDetector(shifted, score=0.7))
    report.evaluate(model, data_dir, tmp_path / "out", ReportParams(warmup_images=0))
    out = tmp_path / "out"
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(out / "groundtruth.json"))
        evaluator = COCOeval(gt, gt.loadRes(str(out / "detections.json")), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    saved = json.loads((out / "metrics.json").read_text())
    keys = ["map", "map_50", "map_75", "map_small", "map_medium", "map_large",
            "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large"]
    assert 0 < saved["map"] < 1  # a non-trivial score, not all ones or zeros
    for key, value in zip(keys, evaluator.stats):
        assert saved[key] == (None if value < 0 else pytest.approx(value)), key


# --- many classes (issue 13, 8) ----------------------------------------------------------------

def _many_classes(count: int) -> confusion.ConfusionResult:
    rng = np.random.default_rng(count)
    labels = [f"class_{k:03d}" for k in range(count)] + [confusion.BACKGROUND]
    matrix = rng.poisson(0.2, (count + 1, count + 1))
    matrix[np.diag_indices(count)] += 20
    matrix[count, count] = 0
    return confusion.ConfusionResult(labels, matrix, {})


@pytest.mark.parametrize("count", [100, 300])
def test_confusion_picture_is_bounded_and_the_csv_complete_for_many_classes(tmp_path, count):
    import time

    import cv2

    result = _many_classes(count)
    start = time.perf_counter()
    report_outputs.plot_confusion(tmp_path / "c.png", result, {"iou": 0.5, "score_threshold": 0.5})
    assert time.perf_counter() - start < 30  # before: 66 s and 3.8 GB at 100 classes
    height, width = cv2.imread(str(tmp_path / "c.png")).shape[:2]
    assert height <= 2000 and width <= 2000  # before: 10260 x 12319 px at 100 classes
    report_outputs.write_confusion_csv(tmp_path / "c.csv", result)
    with (tmp_path / "c.csv").open() as f:
        rows = [(r["actual"], r["predicted"]) for r in csv.DictReader(f)]
    assert {a for a, _ in rows} | {p for _, p in rows} == set(result.labels)
    assert len(rows) == result.matrix.sum()


def test_small_confusion_pictures_keep_their_size(tmp_path):
    import cv2

    path = tmp_path / "c.png"
    report_outputs.plot_confusion(path, _many_classes(3), {"iou": 0.5, "score_threshold": 0.5})
    assert cv2.imread(str(path)).shape[:2] == (560, 680)


def test_top_confusions_are_the_largest_off_diagonal_cells():
    matrix = np.array([[9, 2, 0], [5, 9, 1], [0, 2, 0]])
    result = confusion.ConfusionResult(["a", "b", confusion.BACKGROUND], matrix, {})
    assert confusion.top_confusions(result, 3) == [(1, 0), (0, 1), (2, 1)]
    assert confusion.top_confusions(result, 10) == [(1, 0), (0, 1), (2, 1), (1, 2)]


@pytest.mark.parametrize("count, legend", [(3, True), (300, False)])
def test_pr_plot_names_classes_in_a_legend_only_when_it_fits(tmp_path, monkeypatch, count, legend):
    figures = []
    make_figure = report_outputs._figure
    monkeypatch.setattr(report_outputs, "_figure", lambda *a: figures.append(make_figure(*a))
                        or figures[-1])
    recall = np.linspace(0, 1, 101)
    curves = {f"class_{k}": (recall, 1 - recall / 2) for k in range(count)}
    report_outputs.plot_pr_curves(tmp_path / "pr.png", curves, {n: {"ap50": 0.5} for n in curves})
    assert (figures[0].axes[0].get_legend() is not None) == legend
