"""Training throughput of every template on this machine, and what the train stage costs.

1. Per template, at its default input size: images/s of the OD API's ``model_lib_v2.train_loop``
   (one step per loop iteration, input built as the train stage builds it) on the built-in
   sample data, median over the steps after the warm-up ones (the first step traces the graph).
2. One config (the default template at its default size) trained twice in this run: once
   through the train stage's code (``pipeline.train.train_with_model_main``: ``model_main_tf2``
   with the project's compat shims) and once through a bare ``model_lib_v2.train_loop`` call
   under the same ``MirroredStrategy`` model_main_tf2 uses, with the same step blocks. Both
   sides report steady-state images/s (loop iterations after the first) and wall time; goal:
   stage / bare >= 0.97 (the pipeline adds no overhead to training).

Every training runs in a fresh subprocess, so both sides start from the same state. Prints a
table, then as its last line a JSON object with the figures. Run from the repository root:
``python benchmarks/models.py`` (``--help`` for sizes and step counts).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Measured steps per template (after the warm-up ones); fewer for the slow ones.
STEPS = {"ssd_mobilenet_v2_fpnlite_cpu": 8, "ssd_mobilenet_v2_fpnlite_320": 6,
         "ssd_mobilenet_v2_320": 6, "efficientdet_d0": 4, "faster_rcnn_resnet50_640": 3}
WARMUP_STEPS = 2
STAGE_GOAL = 0.97


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=4, help="per template (default 4)")
    parser.add_argument("--models", nargs="*", default=sorted(STEPS), help="templates to time")
    parser.add_argument("--compare-steps", type=int, default=200,
                        help="steps of the stage-vs-bare comparison (blocks of 100)")
    parser.add_argument("--compare-batch-size", type=int, default=4)
    parser.add_argument("--worker", choices=("stage", "bare", "loop"), help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--per-iteration", type=int, default=1, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# --- workers (run in their own process) --------------------------------------------------------


def run_worker(args: argparse.Namespace) -> None:
    """Train ``args.config`` for ``args.steps`` steps; print the call's wall seconds as JSON."""
    start = time.perf_counter()
    if args.worker == "stage":
        train_stage_segment(args.config, args.model_dir, args.steps, checkpoint_every(args),
                            args.compare_batch_size)
    else:
        bare_train_loop(args.config, args.model_dir, args.steps, args.per_iteration,
                        stage_input=args.worker == "loop")
    print(json.dumps({"wall_seconds": time.perf_counter() - start}))


def train_stage_segment(config: Path, model_dir: Path, steps: int, every_n: int,
                        batch_size: int) -> None:
    """One training segment as the train stage runs it: its per-step monitor (progress, NaN/Inf
    guard) installed, ``model_main_tf2`` called with the stage's flags."""
    from pipeline import compat
    from pipeline.train import TrainMonitor, model_main_argv, train_with_model_main

    compat.apply()
    monitor = TrainMonitor(steps, batch_size, model_dir, 10.0)
    compat.observe_train_steps(monitor)
    train_with_model_main(model_main_argv(config, model_dir, steps, every_n))


def checkpoint_every(args: argparse.Namespace) -> int:
    return args.steps  # one checkpoint at the end, on both sides


def bare_train_loop(config: Path, model_dir: Path, steps: int, per_iteration: int,
                    stage_input: bool = False) -> None:
    """``model_lib_v2.train_loop`` as ``model_main_tf2`` calls it, without the project's code
    around it (the proto import shim is needed for the OD API to import at all).
    ``stage_input``: build the input as the train stage does (tf.data autotune off, which
    avoids a ~58 s stall when the loop ends; see compat.py, shim 5)."""
    from pipeline import compat

    compat.apply()
    import tensorflow as tf
    from object_detection import model_lib_v2

    if stage_input:
        compat.without_autotune_model_thread(model_lib_v2.inputs)

    tf.keras.utils.set_random_seed(0)  # as the train stage does (train.seed)
    tf.config.set_soft_device_placement(True)
    with tf.compat.v2.distribute.MirroredStrategy().scope():
        model_lib_v2.train_loop(pipeline_config_path=str(config), model_dir=str(model_dir),
                                train_steps=steps, checkpoint_every_n=steps,
                                record_summaries=False, num_steps_per_iteration=per_iteration)


# --- the driver --------------------------------------------------------------------------------


def sh(cmd: list[str], cwd: Path = ROOT) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed:\n{result.stdout[-3000:]}\n"
                 f"{result.stderr[-3000:]}")
    return result.stdout


def write_params(path: Path, work: Path, model: str, batch_size: int, steps: int) -> Path:
    import yaml

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["sample"].update(num_images=40, image_size=256, val_fraction=0.1, test_fraction=0.1)
    params["data"]["root"] = str(work / "sample")
    params["model"]["name"] = model
    params["train"].update(batch_size=batch_size, num_steps=steps,
                           warmup_steps=min(params["train"]["warmup_steps"], steps - 1))
    params["mlflow"]["tracking_uri"] = f"sqlite:///{work / 'mlflow.db'}"
    path.write_text(yaml.safe_dump(params))
    return path


def prepare_data(work: Path) -> None:
    """The built-in sample dataset (40 images) converted to TFRecords, through the stages."""
    params = write_params(work / "params.yaml", work, "ssd_mobilenet_v2_fpnlite_cpu", 4, 10)
    python = sys.executable
    sh([python, "-m", "pipeline", "sample", "--params", str(params), "--output",
        str(work / "sample")])
    sh([python, "-m", "pipeline", "convert", "--params", str(params), "--output",
        str(work / "tfrecords")])


def configure(work: Path, model: str, batch_size: int, steps: int) -> Path:
    params = write_params(work / f"params_{model}.yaml", work, model, batch_size, steps)
    output = work / f"{model}_b{batch_size}_{steps}.config"
    sh([sys.executable, "-m", "pipeline", "configure", "--params", str(params), "--data",
        str(work / "tfrecords"), "--output", str(output)])
    return output


def train(side: str, config: Path, model_dir: Path, steps: int, per_iteration: int) -> dict:
    """Train in a subprocess; wall seconds of the call and steps/s of each loop iteration."""
    out = sh([sys.executable, str(Path(__file__).resolve()), "--worker", side, "--config",
              str(config), "--model-dir", str(model_dir), "--steps", str(steps),
              "--per-iteration", str(per_iteration)])
    wall = json.loads(out.strip().splitlines()[-1])["wall_seconds"]
    return {"wall_seconds": wall, "steps_per_sec": steps_per_sec(model_dir / "train")}


def steps_per_sec(event_dir: Path) -> list[float]:
    from pipeline.train import read_scalars

    return [value for _, value in sorted(read_scalars(event_dir).get("steps_per_sec", []))]


def time_template(work: Path, model: str, batch_size: int) -> dict:
    steps = WARMUP_STEPS + STEPS.get(model, 4)
    config = configure(work, model, batch_size, steps)
    result = train("loop", config, work / f"run_{model}", steps, per_iteration=1)
    measured = result["steps_per_sec"][WARMUP_STEPS:]
    rate = statistics.median(measured) * batch_size
    from pipeline import configure as configure_stage

    size = configure_stage.image_size(configure_stage.load_template(model))
    return {"model": model, "image_size": size, "batch_size": batch_size,
            "images_per_second": round(rate, 2), "seconds_per_step": round(batch_size / rate, 3),
            "measured_steps": len(measured), "wall_seconds": round(result["wall_seconds"], 1)}


def compare_stage_and_bare(work: Path, batch_size: int, steps: int) -> dict:
    """The default template through the train stage and through a bare train_loop."""
    from pipeline.compat import steps_per_iteration

    model = "ssd_mobilenet_v2_fpnlite_cpu"
    config = configure(work, model, batch_size, steps)
    block = steps_per_iteration(steps)  # what the stage's shim picks; the bare side gets it too
    sides = {side: train(side, config, work / f"compare_{side}", steps, block)
             for side in ("stage", "bare")}
    figures = {"model": model, "batch_size": batch_size, "steps": steps, "block": block}
    for side, result in sides.items():
        steady = result["steps_per_sec"][1:] or result["steps_per_sec"]
        figures[f"{side}_images_per_second"] = round(statistics.median(steady) * batch_size, 2)
        figures[f"{side}_wall_seconds"] = round(result["wall_seconds"], 1)
    figures["ratio"] = round(figures["stage_images_per_second"]
                             / figures["bare_images_per_second"], 3)
    figures["wall_ratio"] = round(figures["bare_wall_seconds"] / figures["stage_wall_seconds"], 3)
    return figures


def print_table(rows: list[dict]) -> None:
    print(f"{'template':<30} {'size':>5} {'batch':>5} {'images/s':>9} {'s/step':>7}")
    for row in rows:
        print(f"{row['model']:<30} {row['image_size']:>5} {row['batch_size']:>5} "
              f"{row['images_per_second']:>9.2f} {row['seconds_per_step']:>7.3f}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        run_worker(args)
        return
    with tempfile.TemporaryDirectory(prefix="bench-models-") as tmp:
        work = Path(tmp)
        prepare_data(work)
        rows = []
        for model in args.models:
            rows.append(time_template(work, model, args.batch_size))
            print(f"  {model}: {rows[-1]['images_per_second']} images/s", flush=True)
        compare = compare_stage_and_bare(work, args.compare_batch_size, args.compare_steps)
    print_table(rows)
    print(f"train stage {compare['stage_images_per_second']} images/s vs bare train_loop "
          f"{compare['bare_images_per_second']} images/s: ratio {compare['ratio']} "
          f"(goal >= {STAGE_GOAL}); wall {compare['stage_wall_seconds']} s vs "
          f"{compare['bare_wall_seconds']} s")
    print(json.dumps({"templates": rows, "stage_vs_bare": compare,
                      "goal_met": compare["ratio"] >= STAGE_GOAL}))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # this checkout's pipeline package, not an installed one
    main()
