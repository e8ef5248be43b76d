"""Training throughput of every template on this machine, and what the train stage costs.

1. Per template, at its default input size: images/s of the OD API's ``model_lib_v2.train_loop``
   (one step per loop iteration, input built as the train stage builds it) on the built-in
   sample data, median over the steps after the warm-up ones (the first step traces the graph).
2. One config (the default template at its default size) trained through the train stage's
   code (``pipeline.training.loop.train_with_model_main``: ``model_main_tf2`` with the project's
   compat shims and training hooks, and the stage's per-step monitor) and through a bare
   ``model_lib_v2.train_loop`` call with its defaults (blocks of 100 steps, tf.data
   autotuning on, no hook around the loop) under the ``MirroredStrategy`` model_main_tf2 uses. Throughput on this 2-core VM varies by
   up to 20% from one process to the next and from minute to minute, more than the difference
   being measured, so both sides run in ONE process, alternating (stage, bare, bare, stage, ...)
   for ``--rounds`` rounds, each on a fresh model directory; each round gives a paired ratio
   of steady-state images/s (steps after the first ``--warmup-steps``). Goal: the median
   paired ratio stage / bare >= 0.97 (the pipeline adds no overhead to training).

Each template's timing and the comparison run in subprocesses of their own. Prints a
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
    parser.add_argument("--compare-steps", type=int, default=300,
                        help="steps per training of the stage-vs-bare comparison (default 300)")
    parser.add_argument("--warmup-steps", type=int, default=100,
                        help="steps left out of each comparison training's rate (default 100)")
    parser.add_argument("--rounds", type=int, default=6,
                        help="stage-vs-bare rounds, one training per side each (default 6)")
    parser.add_argument("--compare-batch-size", type=int, default=4)
    parser.add_argument("--worker", choices=("alternate", "loop"), help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--per-iteration", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.warmup_steps >= args.compare_steps:
        parser.error("--rounds must be >= 1 and --warmup-steps below --compare-steps")
    return args


# --- workers (run in their own process) --------------------------------------------------------


def run_worker(args: argparse.Namespace) -> None:
    """Run one worker; print its figures as JSON on the last line."""
    if args.worker == "alternate":
        rounds = alternate_stage_and_bare(args.config, args.model_dir, args.steps, args.rounds,
                                          args.compare_batch_size, args.warmup_steps)
        print(json.dumps({"rounds": rounds}))
        return
    start = time.perf_counter()
    bare_train_loop(args.config, args.model_dir, args.steps, args.per_iteration, stage_input=True)
    print(json.dumps({"wall_seconds": time.perf_counter() - start}))


def alternate_stage_and_bare(config: Path, work: Path, steps: int, rounds: int,
                             batch_size: int, warmup_steps: int) -> list[dict]:
    """``rounds`` rounds of one training per side, in this process, the order alternating so
    that neither side always runs first; each on a fresh model directory."""
    from pipeline.core import compat
    from pipeline.odapi import training_hooks

    compat.apply()
    from object_detection import model_lib_v2

    pristine = {name: training_hooks.od_api_original(function)
                for name, function in od_api_training_functions(model_lib_v2).items()}
    results = []
    for index in range(rounds):
        figures = {}
        for side in ("stage", "bare") if index % 2 == 0 else ("bare", "stage"):
            model_dir = work / f"{side}_{index}"
            start = time.perf_counter()
            if side == "stage":
                train_stage_segment(config, model_dir, steps, steps, batch_size)
            else:
                restore_training_functions(model_lib_v2, pristine)
                bare_train_loop(config, model_dir, steps)
            figures[side] = {"wall_seconds": round(time.perf_counter() - start, 1),
                             "images_per_second": steady_rate(model_dir / "train", warmup_steps,
                                                              batch_size)}
        figures["ratio"] = round(figures["stage"]["images_per_second"]
                                 / figures["bare"]["images_per_second"], 3)
        print(json.dumps({"round": index, **figures}), file=sys.stderr, flush=True)
        results.append(figures)
    return results


def od_api_training_functions(model_lib_v2) -> dict:
    """The functions the stage's training hooks wrap, as the module holds them now."""
    return {"train_loop": model_lib_v2.train_loop,
            "eager_train_step": model_lib_v2.eager_train_step,
            "train_input": model_lib_v2.inputs.train_input}


def restore_training_functions(model_lib_v2, functions: dict) -> None:
    """Undo the stage's training hooks so that the next ``train_loop`` call is the OD API's own."""
    model_lib_v2.train_loop = functions["train_loop"]
    model_lib_v2.eager_train_step = functions["eager_train_step"]
    model_lib_v2.inputs.train_input = functions["train_input"]


def train_stage_segment(config: Path, model_dir: Path, steps: int, every_n: int,
                        batch_size: int) -> None:
    """One training segment as the train stage runs it: its per-step monitor (progress, NaN/Inf
    guard) installed, ``model_main_tf2`` called with the stage's flags."""
    from pipeline import compat  # first: it sets TF_USE_LEGACY_KERAS before TensorFlow loads
    from pipeline.training.loop import model_main_argv, train_with_model_main
    from pipeline.training.monitor import TrainMonitor

    from pipeline.odapi import training_hooks

    compat.apply()
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)  # as the train stage does (train.seed)
    monitor = TrainMonitor(steps, batch_size, 10.0)
    training_hooks.observe_train_steps(monitor)
    train_with_model_main(model_main_argv(config, model_dir, steps, every_n))


def bare_train_loop(config: Path, model_dir: Path, steps: int, per_iteration: int | None = None,
                    stage_input: bool = False) -> None:
    """``model_lib_v2.train_loop`` as ``model_main_tf2`` calls it, without the project's code
    around it (the proto import shim is needed for the OD API to import at all); its own block
    size (100 steps) unless ``per_iteration`` is given. ``stage_input``: build the input as the
    train stage does (tf.data autotune off, which avoids a stall of up to 58 s when the loop
    ends; see pipeline/odapi/training_hooks.py, hook B)."""
    from pipeline.core import compat
    from pipeline.odapi import training_hooks

    compat.apply()
    import tensorflow as tf
    from object_detection import model_lib_v2

    if stage_input:
        training_hooks.without_autotune_threads(model_lib_v2.inputs)
    blocks = {"num_steps_per_iteration": per_iteration} if per_iteration else {}
    tf.keras.utils.set_random_seed(0)  # as the train stage does (train.seed)
    tf.config.set_soft_device_placement(True)
    with tf.compat.v2.distribute.MirroredStrategy().scope():
        model_lib_v2.train_loop(pipeline_config_path=str(config), model_dir=str(model_dir),
                                train_steps=steps, checkpoint_every_n=steps,
                                record_summaries=False, **blocks)


def steady_rate(event_dir: Path, warmup_steps: int, batch_size: int) -> float:
    """Images/s over the loop blocks that start at or after ``warmup_steps`` (the first steps
    include tracing), from the ``steps_per_sec`` scalar train_loop writes after each block."""
    from pipeline.training.curves import read_scalars

    steps = seconds = 0.0
    previous = 0
    for step, rate in sorted(read_scalars(event_dir).get("steps_per_sec", [])):
        block, previous = step - previous, step
        if step - block >= warmup_steps:
            steps, seconds = steps + block, seconds + block / rate
    if not seconds:
        sys.exit(f"no training block after step {warmup_steps} in {event_dir}")
    return round(batch_size * steps / seconds, 2)


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
    run_sample(params, work / "sample")
    sh([sys.executable, "-m", "pipeline", "convert", "--params", str(params), "--output",
        str(work / "tfrecords")])


def run_sample(params: Path, output: Path) -> None:
    """The sample stage, writing ``output`` (the ``data.root`` of ``params``). It runs with a
    copy of ``params`` whose data.root is the project's default: every stage refuses a
    data.root that does not exist yet, except the project's own sample folder."""
    import yaml

    values = yaml.safe_load(params.read_text())
    values["data"]["root"] = yaml.safe_load((ROOT / "params.yaml").read_text())["data"]["root"]
    sample_params = params.with_name(f"{params.stem}_sample.yaml")
    sample_params.write_text(yaml.safe_dump(values))
    sh([sys.executable, "-m", "pipeline", "sample", "--params", str(sample_params), "--output",
        str(output)])


def configure(work: Path, model: str, batch_size: int, steps: int) -> Path:
    params = write_params(work / f"params_{model}.yaml", work, model, batch_size, steps)
    output = work / f"{model}_b{batch_size}_{steps}.config"
    sh([sys.executable, "-m", "pipeline", "configure", "--params", str(params), "--data",
        str(work / "tfrecords"), "--output", str(output)])
    return output


def train_loop_timing(config: Path, model_dir: Path, steps: int) -> dict:
    """Train one step per loop iteration in a subprocess; wall seconds and steps/s per step."""
    out = sh([sys.executable, str(Path(__file__).resolve()), "--worker", "loop", "--config",
              str(config), "--model-dir", str(model_dir), "--steps", str(steps),
              "--per-iteration", "1"])
    wall = json.loads(out.strip().splitlines()[-1])["wall_seconds"]
    return {"wall_seconds": wall, "steps_per_sec": steps_per_sec(model_dir / "train")}


def steps_per_sec(event_dir: Path) -> list[float]:
    from pipeline.training.curves import read_scalars

    return [value for _, value in sorted(read_scalars(event_dir).get("steps_per_sec", []))]


def time_template(work: Path, model: str, batch_size: int) -> dict:
    steps = WARMUP_STEPS + STEPS.get(model, 4)
    config = configure(work, model, batch_size, steps)
    result = train_loop_timing(config, work / f"run_{model}", steps)
    measured = result["steps_per_sec"][WARMUP_STEPS:]
    rate = statistics.median(measured) * batch_size
    from pipeline.odapi import pipeline_config

    size = pipeline_config.image_size(pipeline_config.load_template(model))
    return {"model": model, "image_size": size, "batch_size": batch_size,
            "images_per_second": round(rate, 2), "seconds_per_step": round(batch_size / rate, 3),
            "measured_steps": len(measured), "wall_seconds": round(result["wall_seconds"], 1)}


def compare_stage_and_bare(work: Path, args: argparse.Namespace) -> dict:
    """The default template through the train stage and through a bare train_loop, in rounds."""
    model = "ssd_mobilenet_v2_fpnlite_cpu"
    config = configure(work, model, args.compare_batch_size, args.compare_steps)
    out = sh([sys.executable, str(Path(__file__).resolve()), "--worker", "alternate",
              "--config", str(config), "--model-dir", str(work / "compare"),
              "--steps", str(args.compare_steps), "--rounds", str(args.rounds),
              "--warmup-steps", str(args.warmup_steps),
              "--compare-batch-size", str(args.compare_batch_size)])
    rounds = json.loads(out.strip().splitlines()[-1])["rounds"]
    return summarize_rounds(rounds, model, args)


def summarize_rounds(rounds: list[dict], model: str, args: argparse.Namespace) -> dict:
    """Per-side medians and the median of the paired per-round ratios (the goal's figure)."""
    def median(side: str, key: str) -> float:
        return round(statistics.median(r[side][key] for r in rounds), 2)

    ratios = [r["ratio"] for r in rounds]
    return {"model": model, "batch_size": args.compare_batch_size, "steps": args.compare_steps,
            "warmup_steps": args.warmup_steps, "rounds": rounds,
            "stage_images_per_second": median("stage", "images_per_second"),
            "bare_images_per_second": median("bare", "images_per_second"),
            "stage_wall_seconds": median("stage", "wall_seconds"),
            "bare_wall_seconds": median("bare", "wall_seconds"),
            "ratio": round(statistics.median(ratios), 3),
            "ratio_range": [min(ratios), max(ratios)]}


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
        compare = compare_stage_and_bare(work, args)
    print_table(rows)
    for index, row in enumerate(compare["rounds"]):
        print(f"round {index}: stage {row['stage']['images_per_second']:.2f} images/s "
              f"({row['stage']['wall_seconds']} s), bare {row['bare']['images_per_second']:.2f} "
              f"images/s ({row['bare']['wall_seconds']} s), ratio {row['ratio']:.3f}")
    print(f"train stage {compare['stage_images_per_second']} images/s vs bare train_loop "
          f"{compare['bare_images_per_second']} images/s (medians); median paired ratio "
          f"{compare['ratio']} (range {compare['ratio_range'][0]}-{compare['ratio_range'][1]}, "
          f"goal >= {STAGE_GOAL}); median wall {compare['stage_wall_seconds']} s vs "
          f"{compare['bare_wall_seconds']} s")
    print(json.dumps({"templates": rows, "stage_vs_bare": compare,
                      "goal_met": compare["ratio"] >= STAGE_GOAL}))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # this checkout's pipeline package, not an installed one
    main()
