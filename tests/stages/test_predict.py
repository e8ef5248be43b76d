"""`python -m pipeline predict` on an image, a folder and a short video made by the test."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow as tf

from pipeline.odapi import detector
from pipeline import cli
from tests.huge_image import huge_png

LABEL_MAP = "item {\n  id: 1\n  name: 'circle'\n}\nitem {\n  id: 2\n  name: 'square'\n}\n"


class _Detector(tf.Module):
    """Two detections: a square (0.9) at a fixed place and a circle (0.3)."""

    @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8)])
    def serve(self, input_tensor):
        return {"detection_boxes": tf.constant([[[0.1, 0.2, 0.5, 0.6], [0.6, 0.6, 0.9, 0.9],
                                                 [0.0, 0.0, 0.0, 0.0]]]),
                "detection_scores": tf.constant([[0.9, 0.3, 0.0]]),
                "detection_classes": tf.constant([[2.0, 1.0, 1.0]]),
                "num_detections": tf.constant([2.0])}


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("export")
    module = _Detector()
    tf.saved_model.save(module, str(directory / "saved_model"),
                        signatures={"serving_default": module.serve})
    (directory / "label_map.pbtxt").write_text(LABEL_MAP)
    return directory


@pytest.fixture(scope="module")
def params_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("params") / "params.yaml"
    path.write_text("{}\n")
    return path


def _image(path: Path, size=(60, 80)) -> Path:
    image = np.random.default_rng(0).integers(0, 255, (*size, 3), dtype=np.uint8)
    cv2.imwrite(str(path), image)
    return path


def _video(path: Path, frames: int = 5) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (64, 48))
    for k in range(frames):
        writer.write(np.full((48, 64, 3), 20 * k, np.uint8))
    writer.release()
    return path


def _predict(model, params_file, output, *args) -> tuple[int, dict]:
    code = cli.main(["predict", "--params", str(params_file), "--model", str(model),
                     "--output", str(output), *map(str, args)])
    result = output / "detections.json"
    return code, json.loads(result.read_text()) if result.is_file() else {}


def test_image(model, params_file, tmp_path):
    code, result = _predict(model, params_file, tmp_path / "out", _image(tmp_path / "a.jpg"))
    assert code == 0
    (item,) = result["inputs"]
    assert item["type"] == "image" and (item["width"], item["height"]) == (80, 60)
    (detection,) = item["detections"]  # the 0.3 circle is below the default threshold 0.5
    assert detection["class"] == "square" and detection["score"] == pytest.approx(0.9)
    assert detection["box_pixels"] == pytest.approx([16, 6, 32, 24])
    annotated = cv2.imread(item["output"])
    assert annotated.shape == (60, 80, 3)
    assert not np.array_equal(annotated, cv2.imread(str(tmp_path / "a.jpg")))


def test_folder_with_options_and_a_bad_file(model, params_file, tmp_path, capsys):
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    _image(folder / "x.png")
    _image(folder / "sub" / "x.jpg", size=(32, 32))
    (folder / "broken.jpg").write_bytes(b"not an image")
    code, result = _predict(model, params_file, tmp_path / "out", folder, tmp_path / "missing.jpg",
                            "--score-threshold", "0.2", "--max-detections", "1")
    assert code == 0
    assert [Path(i["path"]).name for i in result["inputs"]] == ["x.jpg", "x.png"]  # path order
    assert {Path(i["output"]).name for i in result["inputs"]} == {"x.png", "x_2.png"}
    assert all(len(i["detections"]) == 1 for i in result["inputs"])  # max 1 of the 2 above 0.2
    reasons = {Path(s["path"]).name: s["reason"] for s in result["skipped"]}
    assert reasons == {"broken.jpg": "not a readable image",
                       "missing.jpg": "no such file or folder"}
    assert "skipped" in capsys.readouterr().err


def test_video(model, params_file, tmp_path):
    code, result = _predict(model, params_file, tmp_path / "out", _video(tmp_path / "clip.mp4"),
                            "--score-threshold", "0.25")
    assert code == 0
    (item,) = result["inputs"]
    assert item["type"] == "video" and len(item["frames"]) == 5
    assert all(len(f["detections"]) == 2 for f in item["frames"])
    capture = cv2.VideoCapture(item["output"])
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    capture.release()


def test_only_bad_inputs_fail_with_one_line(model, params_file, tmp_path, capsys):
    (tmp_path / "bad.mp4").write_bytes(b"nothing")
    code, _ = _predict(model, params_file, tmp_path / "out", tmp_path / "bad.mp4")
    assert code == 1
    err = capsys.readouterr().err
    assert "error: predict: none of the 1 input(s) could be read" in err
    assert "Traceback" not in err


def test_bad_option_is_refused(model, params_file, tmp_path):
    with pytest.raises(SystemExit):
        _predict(model, params_file, tmp_path / "out", tmp_path, "--score-threshold", "2")


def test_huge_image_is_refused_before_decoding(model, params_file, tmp_path, capsys):
    """The image policy's pixel limit: a clear skip, and memory does not grow by gigabytes."""
    import resource

    huge = huge_png(tmp_path / "huge.png")
    assert huge.stat().st_size < 1_000_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    code, result = _predict(model, params_file, tmp_path / "out", huge, _image(tmp_path / "a.jpg"))
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert code == 0 and len(result["inputs"]) == 1
    (skipped,) = result["skipped"]
    assert skipped["path"] == str(huge)
    assert "(900,000,000 pixels) is over the limit of 178,956,970" in skipped["reason"]
    assert "over the limit" in capsys.readouterr().err
    assert grown_mib < 300, f"peak memory grew by {grown_mib:.0f} MiB"


def test_output_inside_an_input_is_refused(model, params_file, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    image = _image(folder / "a.png")
    before = image.read_bytes()
    for output in (folder, folder / "out", image):
        code, _ = _predict(model, params_file, output, folder)
        err = capsys.readouterr().err
        assert code == 1 and "could overwrite inputs" in err and "Traceback" not in err
    assert sorted(p.name for p in folder.iterdir()) == ["a.png"] and image.read_bytes() == before


def test_output_names_stay_in_the_output_and_never_overwrite(model, params_file, tmp_path,
                                                             monkeypatch):
    """Names from odd inputs stay inside --output; same-named inputs and inputs that live in
    --output itself are never overwritten."""
    out = tmp_path / "out"
    (tmp_path / "work" / "a").mkdir(parents=True)
    (tmp_path / "b").mkdir()
    out.mkdir()
    inputs = [_image(tmp_path / "..jpg"),  # stem '.': used to become out.png beside out/
              _image(tmp_path / "work" / "a" / "x.y.jpg"), _image(tmp_path / "b" / "x.y.png"),
              _image(tmp_path / "x.z.jpg"),  # same 'x' once the suffix was replaced
              _image(out / "mine.png")]  # an input inside the output folder
    mine = inputs[-1].read_bytes()
    monkeypatch.chdir(tmp_path / "work")
    code, result = _predict(model, params_file, out, Path("../..jpg"), Path("a/x.y.jpg"),
                            tmp_path / "b" / "x.y.png", tmp_path / "x.z.jpg", inputs[-1])
    assert code == 0 and len(result["inputs"]) == 5
    written = [Path(i["output"]) for i in result["inputs"]]
    assert all(p.parent == out and p.is_file() for p in written)
    assert len({p.name.lower() for p in written}) == 5
    assert inputs[-1].read_bytes() == mine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["..jpg", "b", "out", "work",
                                                          "x.z.jpg"]


def test_malformed_label_map_stops_before_the_model_loads(params_file, tmp_path, capsys,
                                                          monkeypatch):
    def never(*args):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(detector.Detector, "load", never)
    model = tmp_path / "export"
    model.mkdir()
    (model / "label_map.pbtxt").write_text(LABEL_MAP + LABEL_MAP)  # every id and name twice
    code, _ = _predict(model, params_file, tmp_path / "out", _image(tmp_path / "a.jpg"))
    err = capsys.readouterr().err
    assert code == 1 and err.startswith(f"error: predict: label map {model / 'label_map.pbtxt'}")
    assert "duplicate ids: [1, 2]" in err and len(err.strip().splitlines()) == 1
