"""The YOLO side of benchmarks/peer.py, run by the peer environment's Python (torch and
ultralytics; this project is not installed there, so nothing here imports it).

Trains YOLO11n from its yaml (from scratch: no weights exist or are downloaded) on a YOLO
dataset for a wall-clock budget (Ultralytics' ``time=``, which overrides ``epochs``), on the
CPU with torch on ``--threads`` cores, then predicts the test images one at a time and writes a
JSON file: the detections of each test image (``[x1, y1, x2, y2, score, class]`` in the image's
pixels, keyed by the image's path relative to the dataset folder), ms/image (batch 1, after
warm-up), the weights' size, the train seconds and epochs.

``python peer_yolo.py --data DATA_YAML --imgsz 256 --budget-seconds S --work DIR --out FILE``
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Mapping
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
#: Predictions on the first test image before the timed ones (graph set-up, allocations).
WARMUP_RUNS = 3
#: Detections kept per image, as the project's detector (tflite_max_detections: 100).
MAX_DETECTIONS = 100
#: As Ultralytics' own mAP validation: all but hopeless boxes, its validator's NMS IoU.
CONFIDENCE, NMS_IOU = 0.001, 0.7
#: Integrations that would log elsewhere or send data: all off.
QUIET_SETTINGS = {"sync": False, "clearml": False, "comet": False, "dvc": False, "mlflow": False,
                  "raytune": False, "tensorboard": False, "wandb": False, "vscode_msg": False,
                  "openvino_msg": False}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the dataset's data.yaml")
    parser.add_argument("--imgsz", type=int, required=True, help="training and inference size")
    parser.add_argument("--budget-seconds", type=float, required=True,
                        help="wall-clock training budget (Ultralytics' time=, in hours)")
    parser.add_argument("--work", type=Path, required=True, help="Ultralytics' run folder")
    parser.add_argument("--out", type=Path, required=True, help="the result JSON file")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="torch's CPU threads")
    parser.add_argument("--split", default="test", help="the data.yaml key of the images to predict")
    return parser.parse_args(argv)


def thread_env(environ: Mapping[str, str], threads: int, config_dir: Path) -> dict[str, str]:
    """The environment to set before torch and ultralytics are imported: OpenMP and MKL on
    ``threads`` threads (Ultralytics sets ``OMP_NUM_THREADS=1`` when it is unset), Ultralytics
    offline (no font, weights or version check fetched, no automatic pip install) with its
    settings in ``config_dir`` (not the user's ~/.config)."""
    return {**environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "0", "YOLO_CONFIG_DIR": str(config_dir)}


def use_threads(threads: int) -> None:
    """torch on ``threads`` threads for the whole run, training included: Ultralytics'
    select_device() calls ``torch.set_num_threads(NUM_THREADS)`` (cpu_count - 1, so 1 on 2 cores)
    when training starts, so its NUM_THREADS is set too."""
    import torch
    from ultralytics.utils import torch_utils

    torch_utils.NUM_THREADS = threads
    torch.set_num_threads(threads)


def quiet_ultralytics() -> None:
    """No integration, no telemetry, and no font download: check_det_dataset() fetches
    Arial.ttf for the plots (off here) when it is not on the machine."""
    from ultralytics import settings
    from ultralytics.data import utils as data_utils

    settings.update(QUIET_SETTINGS)
    data_utils.check_font = lambda *args, **kwargs: None


def train(args: argparse.Namespace) -> tuple[Path, dict]:
    """YOLO11n trained from scratch for the budget; its weights and what the run took."""
    from ultralytics import YOLO

    model = YOLO("yolo11n.yaml")  # the architecture only: random weights, nothing downloaded
    start = time.perf_counter()
    # workers=0: data loading in the training process. Ultralytics forces it on the CPU anyway
    # ("time dominated by inference"), and on 2 cores a loader process would only take CPU from
    # torch's two compute threads. val=False: validation only after the last epoch.
    model.train(data=str(args.data), imgsz=args.imgsz, batch=args.batch,
                time=args.budget_seconds / 3600, device="cpu", workers=0, amp=False,
                plots=False, val=False, project=str(args.work.resolve()),
                name=f"yolo11n_{args.imgsz}", exist_ok=True, seed=0, verbose=False)
    seconds = time.perf_counter() - start
    trainer = model.trainer
    weights = Path(trainer.best if Path(trainer.best).exists() else trainer.last)
    return weights, {"train_seconds": round(seconds, 1), "epochs": trainer.epoch + 1,
                     "torch_threads": _torch_threads()}


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def split_images(data_yaml: Path, split: str) -> list[Path]:
    """The images of ``split`` (a folder named in data.yaml, relative to its folder)."""
    import yaml

    folder = data_yaml.parent / yaml.safe_load(data_yaml.read_text())[split]
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def predict(weights: Path, images: list[Path], root: Path, imgsz: int) -> dict:
    """Detections of every image (batch 1), ms per image after the warm-up runs."""
    import cv2
    from ultralytics import YOLO

    model = YOLO(str(weights))
    options = {"imgsz": imgsz, "conf": CONFIDENCE, "iou": NMS_IOU, "max_det": MAX_DETECTIONS,
               "device": "cpu", "verbose": False}
    decoded = [cv2.imread(str(path)) for path in images]  # decoding is not timed (nor ours)
    for _ in range(WARMUP_RUNS):
        model.predict(decoded[0], **options)
    detections, latencies = {}, []
    for path, image in zip(images, decoded):
        start = time.perf_counter()
        boxes = model.predict(image, **options)[0].boxes
        latencies.append((time.perf_counter() - start) * 1000)
        rows = zip(boxes.xyxy.tolist(), boxes.conf.tolist(), boxes.cls.tolist())
        detections[path.relative_to(root).as_posix()] = [[*box, score, int(cls)]
                                                        for box, score, cls in rows]
    return {"detections": detections, "names": {int(k): v for k, v in model.names.items()},
            "latency_ms": {"p50": statistics.median(latencies),
                           "mean": statistics.fmean(latencies)}}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    os.environ.update(thread_env(os.environ, args.threads, args.work / "ultralytics-config"))
    quiet_ultralytics()
    use_threads(args.threads)
    weights, run = train(args)
    images = split_images(args.data, args.split)
    result = {"imgsz": args.imgsz, "budget_seconds": args.budget_seconds, **run,
              "weights": str(weights), "weights_bytes": weights.stat().st_size,
              **predict(weights, images, args.data.parent, args.imgsz)}
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
