"""Peer benchmark: this pipeline vs Ultralytics YOLO11n, same splits, same CPU budget, one scorer.

For each dataset (``--datasets``: ``sample``, the built-in sample of the ``sample`` stage with
the default params; ``bccd``, ../shared/datasets/bccd_voc/BCCD, VOC with its own split lists):

1. ours: a throw-away project copy runs ``dvc repro report`` with the default params (data set
   for the dataset, plus ``--ours-params``); read: the train stage's wall time, the report's
   test metrics, latency, SavedModel and TFLite float32 sizes;
2. YOLO: the same dataset written as a YOLO dataset by the project's writer
   (:mod:`pipeline.data.writers.yolo`: the convert stage's splits and per-image checks); YOLO11n
   from ``yolo11n.yaml`` (from scratch) trained on the CPU with torch on both cores for the same
   wall-clock budget (``--budget-seconds``, default our train stage's seconds) at each of
   ``--yolo-sizes``, then run on the test images (batch 1), by ``benchmarks/peer_yolo.py`` in a
   separate environment (``--peer-venv``, created once: Python 3.11, torch 2.14.1 +
   torchvision 0.29.1, the latest ultralytics; about 6 GB);
3. both scored by the project's pycocotools code (:func:`pipeline.evaluation.coco.compute_metrics`)
   against the same ground truth: our report's ``groundtruth.json`` (the test split as the
   project reads it). Our detections are re-scored the same way and compared with the report's.

Prints a table per dataset (side, image size, train seconds, mAP, mAP@0.5, AP75, per-class
AP@0.5, ms/image, model MB); the last line is a JSON object with everything. Run from the
repository root with the project's environment active: ``python benchmarks/peer.py
[--datasets sample bccd] [--budget-seconds S] [--yolo-sizes 256 320] [--keep DIR]
[--ours-params train.num_steps=400 ...]``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# This checkout's package first: benchmarks/pipeline.py (this script's folder is sys.path[0])
# would shadow it.
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "benchmarks"))
import peer_yolo  # noqa: E402  (benchmarks/peer_yolo.py: imports neither torch nor the project)
from projects import (BCCD, make_project, merged, params_overrides,  # noqa: E402
                      run_dvc)  # (benchmarks/projects.py)

from pipeline.core import layout  # noqa: E402

DATASETS = {"sample": {}, "bccd": {"data": {"format": "voc", "root": str(BCCD), "classes": []}}}
DEFAULT_PEER_VENV = Path.home() / ".cache" / "od-pipeline" / "peer-venv"
#: torch and torchvision pinned (the releases on this machine's disk for Python 3.11);
#: ultralytics is the latest, installed with the pins so that it cannot replace torch.
PEER_TORCH = ("torch==2.14.1", "torchvision==0.29.1")
PEER_VERSIONS_FILE = "peer-versions.json"
ULTRALYTICS_CONFIG_DIR = "ultralytics-config"
VERSIONS_CODE = ("import json, platform, torch, torchvision, ultralytics; print(json.dumps("
                 "{'python': platform.python_version(), 'torch': torch.__version__, "
                 "'torchvision': torchvision.__version__, 'ultralytics': ultralytics.__version__}))")
YOLO_DATA_DIR = "yolo_data"
MB = 1e6


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", choices=sorted(DATASETS),
                        default=["sample", "bccd"])
    parser.add_argument("--budget-seconds", type=float,
                        help="YOLO's training budget (default: our train stage's wall time)")
    parser.add_argument("--yolo-sizes", type=int, nargs="+", default=[256, 320])
    parser.add_argument("--ours-params", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides of our params.yaml, e.g. train.num_steps=400 "
                        "'train.augmentations=[random_horizontal_flip]' (values are YAML)")
    parser.add_argument("--keep", type=Path, help="keep the projects and runs in this folder")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="torch's threads on the YOLO side (default: every core)")
    parser.add_argument("--peer-venv", type=Path, default=DEFAULT_PEER_VENV)
    parser.add_argument("--peer-python", help="the peer's Python 3.11 (default: pyenv's 3.11 "
                        "or python3.11 on PATH)")
    args = parser.parse_args(argv)
    args.ours_params = params_overrides(args.ours_params)
    return args


# --- the peer's environment ----------------------------------------------------------------------

def default_peer_python() -> str:
    """pyenv's Python 3.11 or ``python3.11`` on PATH (tools/find_python.sh looks for both)."""
    found = subprocess.run(["sh", str(ROOT / "tools" / "find_python.sh"), "3.11"],
                           capture_output=True, text=True)
    if found.returncode != 0:
        sys.exit(f"no Python 3.11 for the peer: {found.stderr.strip()} (or pass --peer-python)")
    return found.stdout.strip()


def ensure_peer_venv(venv: Path, python: str | None) -> dict:
    """The peer's environment (torch, torchvision, ultralytics), created once; its versions."""
    versions_file = venv / PEER_VERSIONS_FILE
    if versions_file.is_file():
        return json.loads(versions_file.read_text())
    peer_python = venv / "bin" / "python"
    if not peer_python.exists():
        python = python or default_peer_python()
        print(f"creating the peer environment {venv} with {python} ...", flush=True)
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
    pip = [str(peer_python), "-m", "pip", "install", "-q"]
    print("pip install torch and torchvision (about 5.5 GB), then ultralytics ...", flush=True)
    subprocess.run([*pip, *PEER_TORCH], check=True)
    subprocess.run([*pip, "ultralytics", *PEER_TORCH], check=True)
    env = peer_yolo.thread_env(os.environ, 1, venv / ULTRALYTICS_CONFIG_DIR)
    printed = subprocess.run([str(peer_python), "-c", VERSIONS_CODE], check=True, env=env,
                             capture_output=True, text=True).stdout
    versions = json.loads(printed.strip().splitlines()[-1])  # after Ultralytics' own notes
    versions_file.write_text(json.dumps(versions))
    return versions


# --- our side ------------------------------------------------------------------------------------

def run_ours(work: Path, dataset: str, ours_params: dict) -> tuple[Path, dict]:
    """A project copy trained and reported on ``dataset``; the project and our side's figures."""
    project = make_project(work / f"{dataset}_ours", merged(DATASETS[dataset], ours_params))
    print(f"{dataset}: ours: dvc repro report ...", flush=True)
    repro = run_dvc(["repro", "report"], project)
    stages = repro.stages
    reports = project / layout.REPORTS_DIR
    metrics = json.loads((reports / layout.METRICS_FILE).read_text())
    tflite = _tflite_meta(project / layout.EXPORT_DIR / layout.TFLITE_DIR)
    float32 = metrics.get("tflite", {}).get("float32", {})
    height, width = tflite.get("input_size") or (None, None)  # None: no TFLite written
    return project, {
        "side": "ours", "image_size": height if height == width else f"{height}x{width}",
        "train_seconds": round(stages["train"], 1), "repro_seconds": round(repro.seconds, 1),
        "stage_seconds": stages, "report_metrics": metrics,
        "latency_ms": metrics["latency_ms"]["p50"],
        "tflite_latency_ms": float32.get("latency_ms", {}).get("p50"),
        "model_mb": folder_bytes(project / layout.EXPORT_DIR / layout.SAVED_MODEL_DIR) / MB,
        "tflite_mb": tflite.get("models", {}).get("float32", {}).get("bytes", 0) / MB or None,
    }


def _tflite_meta(folder: Path) -> dict:
    path = folder / layout.TFLITE_META
    return json.loads(path.read_text()) if path.is_file() else {}


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def rescored(side: dict, groundtruth: dict, detections: list[dict]) -> dict:
    """``side`` with the scores of ``detections`` by the project's pycocotools code."""
    from pipeline.evaluation.coco import compute_metrics

    metrics = compute_metrics(groundtruth, detections)
    return {**side, **{k: metrics[k] for k in ("map", "map_50", "map_75")},
            "ap50_per_class": {name: s["ap50"] for name, s in metrics["per_class"].items()}}


def agreement(ours: dict) -> list[str]:
    """Lines naming each score where the re-scoring differs from the report stage's."""
    report = ours["report_metrics"]
    return [f"  ours: {key} re-scored {ours[key]!r} vs the report stage's {report[key]!r}"
            for key in ("map", "map_50", "map_75") if abs(ours[key] - report[key]) > 1e-9]


# --- the YOLO side -------------------------------------------------------------------------------

def write_yolo_data(project: Path, work: Path):
    """The project copy's dataset (its params' data section, a relative root taken from the
    project) written as a YOLO dataset."""
    from pipeline.core.params import load_params
    from pipeline.data.writers.yolo import write_yolo_dataset

    data = load_params(project / layout.PARAMS_FILE).data
    root = project / data.root  # an absolute root stays itself
    return write_yolo_dataset(dataclasses.replace(data, root=str(root)), work / YOLO_DATA_DIR)


def run_yolo(peer_python: Path, venv: Path, data_yaml: Path, size: int, budget: float,
             threads: int, work: Path) -> dict:
    """peer_yolo.py run by the peer's Python (torch on ``threads`` from its start); its result."""
    out = work / f"yolo_{size}.json"
    command = [str(peer_python), str(ROOT / "benchmarks" / "peer_yolo.py"), "--data",
               str(data_yaml), "--imgsz", str(size), "--budget-seconds", str(budget),
               "--threads", str(threads), "--work", str(work / "ultralytics"), "--out", str(out)]
    env = peer_yolo.thread_env(os.environ, threads, venv / ULTRALYTICS_CONFIG_DIR)
    completed = subprocess.run(command, env=env, text=True, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    if completed.returncode != 0:
        sys.exit(f"peer_yolo.py failed (imgsz {size}):\n" + completed.stdout[-6000:])
    return json.loads(out.read_text())


def yolo_detections(result: Mapping, sources: Mapping[str, str],
                    groundtruth: Mapping) -> list[dict]:
    """peer_yolo.py's detections as COCO results against ``groundtruth``: each image found by
    the file name the report gives it (``sources``: written path -> that name), each class by
    name; boxes ``[x1, y1, x2, y2]`` (continuous pixels, as the ground truth) -> ``[x, y, w, h]``.
    Exits when a test image of the ground truth has no YOLO prediction or a name is unknown."""
    image_ids = _unique_ids(groundtruth["images"], "file_name", "test image file name")
    category_ids = _unique_ids(groundtruth["categories"], "name", "class name")
    names = {int(k): v for k, v in result["names"].items()}
    unknown = sorted(set(names.values()) - set(category_ids))
    if unknown:
        sys.exit(f"YOLO classes {unknown} are not in the ground truth's {sorted(category_ids)}")
    predicted = {sources[path]: boxes for path, boxes in result["detections"].items()}
    missing = sorted(set(image_ids) - set(predicted))
    if missing:
        sys.exit(f"{len(missing)} test images have no YOLO prediction, e.g. {missing[:3]}")
    return [{"image_id": image_ids[name], "category_id": category_ids[names[int(cls)]],
             "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score}
            for name, boxes in predicted.items() if name in image_ids
            for x1, y1, x2, y2, score, cls in boxes]


def _unique_ids(entries: Sequence[Mapping], key: str, what: str) -> dict[str, int]:
    ids = {entry[key]: entry["id"] for entry in entries}
    if len(ids) != len(entries):
        sys.exit(f"two ground-truth entries share a {what}: cannot match YOLO's by name")
    return ids


def yolo_side(result: Mapping) -> dict:
    return {"side": "yolo11n", "image_size": result["imgsz"],
            "train_seconds": result["train_seconds"], "budget_seconds": result["budget_seconds"],
            "epochs": result["epochs"], "torch_threads": result["torch_threads"],
            "latency_ms": result["latency_ms"]["p50"], "model_mb": result["weights_bytes"] / MB}


# --- the table -----------------------------------------------------------------------------------

COLUMNS = ("side", "size", "train s", "mAP", "mAP@0.5", "AP75", "AP@0.5 per class", "ms/img",
           "MB")


def table(dataset: str, sides: Sequence[Mapping]) -> str:
    """One dataset's sides as an aligned text table."""
    rows = [COLUMNS] + [_row(side) for side in sides]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
             for row in rows]
    return "\n".join([f"{dataset}:", *lines])


def _row(side: Mapping) -> tuple[str, ...]:
    classes = " ".join(f"{name} {_score(ap)}" for name, ap in side["ap50_per_class"].items())
    latency, size = f"{side['latency_ms']:.1f}", f"{side['model_mb']:.2f}"
    if side.get("tflite_latency_ms") is not None:
        latency += f" (tflite {side['tflite_latency_ms']:.1f})"
    if side.get("tflite_mb"):
        size += f" (tflite {side['tflite_mb']:.2f})"
    return (side["side"], str(side["image_size"]), f"{side['train_seconds']:.0f}",
            _score(side["map"]), _score(side["map_50"]), _score(side["map_75"]), classes,
            latency, size)


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


# --- main ----------------------------------------------------------------------------------------

def compare(dataset: str, args: argparse.Namespace, work: Path, peer_python: Path) -> list[dict]:
    """Both sides on ``dataset``, scored alike."""
    project, ours = run_ours(work, dataset, args.ours_params)
    reports = project / layout.REPORTS_DIR
    groundtruth = json.loads((reports / layout.GROUNDTRUTH_FILE).read_text())
    ours = rescored(ours, groundtruth, json.loads((reports / layout.DETECTIONS_FILE).read_text()))
    for line in agreement(ours):
        print(line, flush=True)
    from pipeline.data.writers.yolo import DATA_YAML

    written = write_yolo_data(project, work / dataset)
    print(f"{dataset}: YOLO dataset {dict(written.images)} images, skipped "
          f"{dict(written.skipped)}", flush=True)
    budget = args.budget_seconds or ours["train_seconds"]
    sides = [ours]
    for size in args.yolo_sizes:
        print(f"{dataset}: yolo11n {size} px for {budget:.0f} s ...", flush=True)
        result = run_yolo(peer_python, args.peer_venv, written.root / DATA_YAML, size, budget,
                          args.threads, work / dataset)
        detections = yolo_detections(result, written.sources, groundtruth)
        sides.append(rescored(yolo_side(result), groundtruth, detections))
    return sides


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.keep and args.keep.exists() and any(args.keep.iterdir()):
        sys.exit(f"--keep {args.keep} is not empty: name a new folder")
    if "bccd" in args.datasets and not BCCD.is_dir():
        sys.exit(f"{BCCD} not found: the bccd dataset needs ../shared/datasets/bccd_voc")
    versions = ensure_peer_venv(args.peer_venv, args.peer_python)
    peer_python = args.peer_venv / "bin" / "python"
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-peer-") as tmp:
        work = args.keep or Path(tmp)
        for dataset in args.datasets:
            results[dataset] = compare(dataset, args, work, peer_python)
    for dataset, sides in results.items():
        print(table(dataset, sides))
    for sides in results.values():
        sides[0].pop("report_metrics")
    print(json.dumps({"peer": versions, "threads": args.threads,
                      "ours_params": args.ours_params, "datasets": results}))


if __name__ == "__main__":
    main()
