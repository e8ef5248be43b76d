"""The augmentation study: test mAP of the default model trained with each augmentation recipe.

Issue 18 asks for augmentations "chosen by measurement". Each recipe is a value of
``train.augmentations``; each (dataset, recipe) pair is a project copy (benchmarks/projects.py's
``make_project``) that runs ``dvc repro report`` from scratch with the default params, but the
recipe and a fixed step count (so that a busy machine changes the wall time, not the result).
The datasets: the built-in sample (default params) and BCCD (``../shared/datasets/bccd_voc``,
VOC with its own split lists). Prints one line per run (test mAP, mAP@0.5, AP75, per-class
AP@0.5, train stage seconds and the load average) and, last, a JSON object.

Run from the repository root with the environment active:
``python benchmarks/augment.py [--datasets bccd sample] [--recipes NAME ...] [--steps N]``.
``--template-replace OLD NEW`` edits the model template of every project copy, to measure a
template setting params.yaml does not expose (e.g. the loss weights: docs/benchmarks.md).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from projects import (BCCD, make_project, merged, params_overrides,  # noqa: E402
                      run_dvc, report_scores)  # (benchmarks/projects.py)

#: Named values of ``train.augmentations``; "template" is [] (the template's own: a flip).
RECIPES = {
    "template": [],
    "flips": ["random_horizontal_flip", "random_vertical_flip"],
    "scale_crop": ["random_horizontal_flip", "random_scale_crop_and_pad_to_square"],
    "ssd_crop": ["random_horizontal_flip", "ssd_random_crop"],
    "image_scale": ["random_horizontal_flip", "random_image_scale"],
    "crop": ["random_horizontal_flip", "random_crop_image"],
    "colour": ["random_horizontal_flip", "random_adjust_brightness", "random_adjust_contrast"],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", choices=("bccd", "sample"), default=["bccd"])
    parser.add_argument("--recipes", nargs="+", choices=sorted(RECIPES),
                        default=["template", "scale_crop", "ssd_crop"])
    parser.add_argument("--steps", type=int,
                        help="training steps per run (default: params.yaml's train.num_steps)")
    parser.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=YAML",
                        help="other params of every run, e.g. model.image_size=320")
    parser.add_argument("--template-replace", nargs=2, action="append", default=[],
                        metavar=("OLD", "NEW"), help="replace the text OLD (found exactly once) "
                        "by NEW in the model template of every run (\\n: a line break); repeatable")
    parser.add_argument("--keep", type=Path, help="keep the projects in this folder")
    return parser.parse_args(argv)


def run_params(dataset: str, recipe: str, steps: int | None, extra: list[str]) -> dict:
    """The params overrides of one run: fixed steps (``None``: params.yaml's), no TFLite, no
    drawings, no registry; ``extra``: ``SECTION.KEY=YAML`` pairs on top."""
    train = {"augmentations": RECIPES[recipe], **({"num_steps": steps} if steps else {})}
    params = {"train": train,
              "export": {"tflite": [], "verify_images": 2},
              "report": {"sample_images": 0, "worst_images": 0, "registered_model": ""}}
    if dataset == "bccd":
        params["data"] = {"format": "voc", "root": str(BCCD), "classes": []}
    return merged(params, params_overrides(extra))


def patch_template(project: Path, replacements: list[tuple[str, str]]) -> None:
    """Apply ``(old, new)`` text replacements to the template that ``model.name`` names in the
    project copy; each ``old`` must occur exactly once (else exit, naming it)."""
    name = yaml.safe_load((project / "params.yaml").read_text())["model"]["name"]
    template = project / "configs" / f"{name}.config"
    text = template.read_text()
    for old, new in replacements:
        old, new = old.replace("\\n", "\n"), new.replace("\\n", "\n")
        if text.count(old) != 1:
            sys.exit(f"--template-replace: {old!r} occurs {text.count(old)} times in "
                     f"configs/{name}.config (expected once)")
        text = text.replace(old, new)
    template.write_text(text)


def run(work: Path, dataset: str, recipe: str, args: argparse.Namespace) -> dict:
    project = make_project(work / f"{dataset}_{recipe}",
                           run_params(dataset, recipe, args.steps, args.set))
    patch_template(project, args.template_replace)
    load_before = os.getloadavg()[0]
    seconds = run_dvc(["repro", "report"], project).stages
    return {"dataset": dataset, "recipe": recipe, **report_scores(project),
            "train_seconds": seconds.get("train"),
            "load": [round(load_before, 2), round(os.getloadavg()[0], 2)]}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if "bccd" in args.datasets and not BCCD.is_dir():
        sys.exit(f"{BCCD} not found: this benchmark needs ../shared/datasets/bccd_voc")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-augment-") as tmp:
        work = args.keep or Path(tmp)
        for dataset in args.datasets:
            for recipe in args.recipes:
                result = run(work, dataset, recipe, args)
                results.append(result)
                classes = ", ".join(f"{k} {v}" for k, v in result["ap50_per_class"].items())
                print(f"{dataset:>6} {recipe:>12}: mAP {result['map']}, mAP@0.5 "
                      f"{result['map_50']}, AP75 {result['map_75']} (AP@0.5 {classes}); train "
                      f"{result['train_seconds']} s; load {result['load']}", flush=True)
    print(json.dumps({"steps": args.steps, "set": args.set,
                      "template_replace": args.template_replace, "runs": results}))


if __name__ == "__main__":
    main()
