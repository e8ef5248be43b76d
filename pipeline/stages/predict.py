"""``python -m pipeline predict --model DIR INPUT...``: run an exported detector on files.

INPUTs are image files, video files or folders (their images and videos, recursively, in name
order). Writes into ``--output`` (default ``predictions/``): each image annotated
(``<name>.png``), each video annotated (``<name>.mp4``, same frame rate) and
``detections.json`` with every detection (class, score, normalised ``[ymin, xmin, ymax, xmax]``
box and pixel ``[x, y, width, height]``) per image or per video frame. Inputs that do not
exist or cannot be decoded (or are over the pixel limit of :mod:`pipeline.data.images`) are
reported on stderr, listed under ``skipped`` in the JSON and skipped; the command fails only
when no input could be read. Output names stay inside ``--output`` and never overwrite an
input or another output (:func:`output_file`); an ``--output`` inside an input is refused.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from pipeline.core import layout
from pipeline.evaluation import drawing
from pipeline.data import images
from pipeline.core import files
from pipeline.core.errors import PipelineError
from pipeline.core.params import Params

if TYPE_CHECKING:  # loaded in run(): a bad argument is refused before TensorFlow loads
    from pipeline.odapi.detector import Detections

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}
#: Written into --output with every detection; also the one name no annotated file may take.
RESULT_FILE = layout.PREDICTIONS_FILE
#: Characters replaced in output names derived from input names (separators, dots at the ends).
UNSAFE_NAME_CHARACTERS = re.compile(r"[^\w.-]+")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the command's options."""
    parser.add_argument("--model", type=Path, required=True,
                        help="export directory (containing saved_model/)")
    parser.add_argument("inputs", nargs="+", type=Path, metavar="INPUT",
                        help="image files, video files or folders")
    parser.add_argument("--output", type=Path, default=layout.PREDICTIONS_DIR,
                        help="folder for annotated files and detections.json "
                             "(default: predictions)")
    parser.add_argument("--score-threshold", type=_unit_float, default=0.5,
                        help="keep detections scoring at least this (default: 0.5)")
    parser.add_argument("--max-detections", type=_positive_int, default=100,
                        help="keep at most this many detections per image/frame (default: 100)")


def _unit_float(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def run(args: argparse.Namespace, params: Params) -> dict:
    """Predict on every input; write annotated files and ``detections.json``."""
    from pipeline.odapi.detector import Detector

    names = read_class_names(args.model)  # a malformed label map stops before the model loads
    predictor = Predictor(Detector.load(args.model), names, args.score_threshold,
                          args.max_detections)
    return predict_all(predictor, args.inputs, args.output)


def read_class_names(model_dir: Path) -> dict[int, str]:
    """``{id: name}`` from ``MODEL/label_map.pbtxt`` (written by export); empty if absent."""
    from pipeline.data import labelmap

    path = Path(model_dir) / layout.LABEL_MAP
    if not path.is_file():
        log.warning("no %s: detections are labelled by class id", path)
        return {}
    return {cid: name for name, cid in labelmap.read_label_map(path).items()}


class Predictor:
    """An exported detector (:class:`pipeline.odapi.detector.Detector`) plus the filtering and
    naming of its detections."""

    def __init__(self, detector: Any, names: dict[int, str], score_threshold: float,
                 max_detections: int):
        self.detector, self.names = detector, names
        self.score_threshold, self.max_detections = score_threshold, max_detections

    def detect(self, rgb: np.ndarray) -> list[dict]:
        """Detections on one RGB uint8 image, best first."""
        detections = self.detector(self.detector.image_input(rgb))
        keep = np.flatnonzero(detections.scores >= self.score_threshold)[: self.max_detections]
        height, width = rgb.shape[:2]
        return [self._detection(detections, k, width, height) for k in keep]

    def _detection(self, detections: Detections, k: int, width: int, height: int) -> dict:
        ymin, xmin, ymax, xmax = (float(v) for v in detections.boxes[k])
        class_id = int(detections.classes[k])
        return {"class_id": class_id, "class": self.names.get(class_id, str(class_id)),
                "score": float(detections.scores[k]),
                "box": [ymin, xmin, ymax, xmax],
                "box_pixels": [xmin * width, ymin * height, (xmax - xmin) * width,
                               (ymax - ymin) * height]}

    def annotate(self, rgb: np.ndarray, detections: list[dict]) -> np.ndarray:
        """The image with its detections drawn."""
        boxes = np.array([d["box"] for d in detections], np.float32).reshape(-1, 4)
        return drawing.draw_boxes(rgb, boxes, [d["class_id"] for d in detections], self.names,
                                  scores=np.array([d["score"] for d in detections]))


def expand_inputs(inputs: list[Path]) -> tuple[list[Path], list[dict]]:
    """Files to process (folders expanded) and ``{"path", "reason"}`` for missing inputs."""
    files, skipped = [], []
    for path in inputs:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*")
                           if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES)
            if not found:
                skipped.append({"path": str(path), "reason": "folder has no images or videos"})
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            skipped.append({"path": str(path), "reason": "no such file or folder"})
    return files, skipped


def predict_all(predictor: Predictor, inputs: list[Path], output: Path) -> dict:
    """Process every input; write ``output/detections.json``; return its content."""
    check_output_folder(output, inputs)
    paths, skipped = expand_inputs(inputs)
    output.mkdir(parents=True, exist_ok=True)
    results = []
    here = os.path.realpath(output)
    names = {RESULT_FILE} | {  # inputs in --output: never overwritten
        f.name.lower() for f in paths if os.path.realpath(f.parent) == here}
    for path in paths:
        is_video = path.suffix.lower() in VIDEO_SUFFIXES
        target = output_file(output, path, ".mp4" if is_video else ".png", names)
        try:
            if is_video:
                results.append(predict_video(predictor, path, target))
            else:
                results.append(predict_image(predictor, path, target))
        except UnreadableInput as err:
            skipped.append({"path": str(path), "reason": str(err)})
    for item in skipped:
        print(f"skipped {item['path']}: {item['reason']}", file=sys.stderr)
    summary = {"score_threshold": predictor.score_threshold,
               "max_detections": predictor.max_detections, "inputs": results, "skipped": skipped}
    files.write_json_atomic(output / RESULT_FILE, summary)
    if not results:
        raise PipelineError(f"none of the {len(inputs)} input(s) could be read "
                            f"({len(skipped)} skipped; see above)")
    log.info("predicted on %d input(s), skipped %d; wrote %s", len(results), len(skipped), output)
    return summary


def check_output_folder(output: Path, inputs: list[Path]) -> None:
    """PipelineError when ``output`` is a file, or equals or lies inside an input: writing
    there could overwrite the inputs."""
    for source in inputs:
        if source.exists() and files.is_within(output, source):
            raise PipelineError(f"--output {output} is (inside) the input {source}: predictions "
                                "could overwrite inputs; choose another output folder")
    if output.exists() and not output.is_dir():
        raise PipelineError(f"--output {output} exists and is not a folder")


def output_file(output: Path, source: Path, suffix: str, taken: set[str]) -> Path:
    """The file in ``output`` for ``source``: its name reduced to safe characters (it stays in
    ``output`` whatever the input is called) and never one in ``taken`` (lower case: names of
    earlier outputs and of inputs in ``output``), which it is added to."""
    stem = UNSAFE_NAME_CHARACTERS.sub("_", source.stem).strip("._") or "input"
    name, n = stem + suffix, 1
    while name.lower() in taken:  # two inputs with the same name (from different folders)
        n += 1
        name = f"{stem}_{n}{suffix}"
    taken.add(name.lower())
    return output / name


class UnreadableInput(Exception):
    """An input file that OpenCV cannot decode."""


def predict_image(predictor: Predictor, path: Path, target: Path) -> dict:
    """Detect on one image file; write it annotated to ``target``."""
    import cv2

    try:  # the project's image policy: pixel limit checked before decoding, EXIF applied
        rgb = images.load_rgb(path)
    except images.ImageTooLarge as err:
        raise UnreadableInput(str(err)) from None
    except (OSError, SyntaxError, ValueError):
        raise UnreadableInput("not a readable image") from None
    detections = predictor.detect(rgb)
    cv2.imwrite(str(target), cv2.cvtColor(predictor.annotate(rgb, detections), cv2.COLOR_RGB2BGR))
    return {"path": str(path), "type": "image", "output": str(target),
            "width": rgb.shape[1], "height": rgb.shape[0], "detections": detections}


def predict_video(predictor: Predictor, path: Path, target: Path) -> dict:
    """Detect on every frame of a video; write it annotated (mp4) to ``target``."""
    import cv2

    from pipeline.core import progress

    capture = cv2.VideoCapture(str(path))
    try:
        images.check_pixels(int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
                            int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)), str(path))
    except images.ImageTooLarge as err:
        capture.release()
        raise UnreadableInput(str(err)) from None
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    frames, writer = [], None
    try:
        for index, rgb in enumerate(progress.Bar(_frames(capture), total=total, desc=path.name,
                                                 unit="frame")):
            if writer is None:
                writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                         (rgb.shape[1], rgb.shape[0]))
            detections = predictor.detect(rgb)
            writer.write(cv2.cvtColor(predictor.annotate(rgb, detections), cv2.COLOR_RGB2BGR))
            frames.append({"frame": index, "detections": detections})
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    if not frames:
        raise UnreadableInput("not a readable video (no frames decoded)")
    return {"path": str(path), "type": "video", "output": str(target), "fps": fps,
            "frames": frames}


def _frames(capture: Any) -> Iterator[np.ndarray]:
    import cv2

    while True:
        ok, bgr = capture.read()
        if not ok:
            return
        yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
