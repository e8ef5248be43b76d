"""Fine-tuning vs training from scratch: test mAP on a second dataset after the same steps.

No zoo checkpoint can be downloaded here, so the "pretrained" model is built the way a user
builds their own: the default model trained by ``dvc repro train`` on dataset A (the built-in
sample: 3 synthetic shape classes, the default params), or the checkpoint given with
``--pretrained`` (a checkpoint prefix or a folder holding one, e.g. ``models/train/best`` of a
finished default run). Dataset B is BCCD (``../shared/datasets/bccd_voc/BCCD``: blood cells,
classes RBC, WBC and Platelets, its own train/val/test lists). Two projects (copies of this
product with their own params and DVC repository) run ``dvc repro report`` on B for
``--steps`` steps with the same params, but one sets ``model.checkpoint`` to the pretrained
checkpoint (``fine_tune_checkpoint_type: detection``: backbone and feature pyramid restored,
box predictor fresh; the fine-tuning schedule of configs/models.yaml) and the other trains from
scratch. Prints each side's test mAP, mAP@0.5, per-class AP@0.5, the restore counts and the
train stage's wall time; issue 12's goal is a better mAP@0.5 when fine-tuned.

Run from the repository root with the environment active: ``python benchmarks/finetune.py
[--steps N] [--pretrained PATH]``. The last line printed is a JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent))
from projects import (BCCD, make_project, report_scores,  # noqa: E402
                      run_dvc)  # (benchmarks/projects.py)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=400, help="training steps on BCCD, per side")
    parser.add_argument("--pretrained", type=Path,
                        help="checkpoint prefix or folder (default: train one on the sample)")
    parser.add_argument("--learning-rate", type=float, default=0.0,
                        help="train.learning_rate of both sides (default 0: each side's own, "
                        "i.e. the fine-tuning factor of configs/models.yaml on that side)")
    parser.add_argument("--keep", type=Path, help="keep the projects in this folder")
    return parser.parse_args(argv)


def pretrained_on_sample(work: Path) -> Path:
    """Dataset A: the default model trained on the built-in sample with the default params."""
    project = make_project(work / "a_sample", {})
    print("training the 'pretrained' model on the sample (default params) ...", flush=True)
    seconds = run_dvc(["repro", "train"], project).stages
    print(f"  done: train stage {seconds.get('train'):.1f} s", flush=True)
    return project / "models" / "train" / "best"


def bccd_params(steps: int, checkpoint: str, learning_rate: float) -> dict:
    return {"data": {"format": "voc", "root": str(BCCD), "classes": []},
            "model": {"checkpoint": checkpoint},
            "train": {"num_steps": steps, "eval_every_n": 0, "checkpoint_every_n": steps,
                      "learning_rate": learning_rate},
            "export": {"tflite": [], "verify_images": 2},
            "report": {"sample_images": 0, "worst_images": 0, "registered_model": ""}}


def run_side(work: Path, name: str, steps: int, checkpoint: str, learning_rate: float) -> dict:
    project = make_project(work / name, bccd_params(steps, checkpoint, learning_rate))
    print(f"{name}: dvc repro report ({steps} steps on BCCD) ...", flush=True)
    load_before = os.getloadavg()[0]
    seconds = run_dvc(["repro", "report"], project).stages
    restore = project / "models" / "train" / "fine_tune_restore.json"
    counts = {}
    if restore.is_file():
        report = json.loads(restore.read_text())
        counts = {k: report[k] for k in ("restored_variables", "unrestored_variables",
                                         "freshly_initialised_variables")}
    return {**report_scores(project), "train_seconds": round(seconds.get("train"), 1),
            "restore": counts,
            "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not BCCD.is_dir():
        sys.exit(f"{BCCD} not found: this benchmark needs ../shared/datasets/bccd_voc")
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
        work = args.keep or Path(tmp)
        pretrained = (args.pretrained or pretrained_on_sample(work)).resolve()
        sides = {"scratch": run_side(work, "b_scratch", args.steps, "none", args.learning_rate),
                 "fine_tuned": run_side(work, "b_fine_tuned", args.steps, str(pretrained),
                                        args.learning_rate)}
    for name, side in sides.items():
        classes = ", ".join(f"{k} {v}" for k, v in side["ap50_per_class"].items())
        print(f"{name:>10}: mAP {side['map']}, mAP@0.5 {side['map_50']}, AP75 {side['map_75']} "
              f"(AP@0.5 {classes}); train stage {side['train_seconds']} s; load "
              f"{side['load_before']} -> {side['load_after']}; restore {side['restore']}")
    better = sides["fine_tuned"]["map_50"] > sides["scratch"]["map_50"]
    print(json.dumps({"steps": args.steps, "pretrained": str(pretrained),
                      "learning_rate": args.learning_rate, **sides,
                      "fine_tuned_better_map_50": better}))


if __name__ == "__main__":
    main()
