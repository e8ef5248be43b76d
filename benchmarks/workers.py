"""Training throughput with one worker process vs two (``train.num_workers``), on this machine.

Both sides train the same ``pipeline.config`` (the default template at 256 px, global batch
``--batch-size``) on the same TFRecords of the built-in sample (converted into 2 shards, so
that each worker reads its own), through the train stage itself (``python -m pipeline
train``): one worker is ``model_main_tf2`` under the ``MirroredStrategy`` in the stage's
process; two are two ``model_main_tf2`` processes with ``TF_CONFIG`` on 127.0.0.1
(``MultiWorkerMirroredStrategy``, each training half of the global batch). Rounds alternate the
order (1, 2, 2, 1, ...). Each training gives its steady-state images/s: global batch x steps/s
over the loop blocks after ``--warmup-steps``, read from the chief's ``steps_per_sec`` summary;
its wall time includes start-up and the end-of-training evaluation. The 1-minute load average
is printed before and after each training. This measures what a second worker process buys (or
costs) on ONE machine of 2 cores; on several machines each worker has its own.

Run from the repository root: ``python benchmarks/workers.py`` (``--help`` for the options).
The last line printed is a JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# This checkout's package first: benchmarks/pipeline.py (this script's folder is sys.path[0])
# would shadow it.
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "benchmarks"))
import models  # noqa: E402  (benchmarks/models.py: sh, steady_rate, run_sample)
TEMPLATE = "ssd_mobilenet_v2_fpnlite_cpu"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="one training per side each")
    parser.add_argument("--steps", type=int, default=200, help="steps per training")
    parser.add_argument("--warmup-steps", type=int, default=50,
                        help="steps left out of the rate (tracing, first blocks)")
    parser.add_argument("--batch-size", type=int, default=8, help="global batch (even)")
    args = parser.parse_args(argv)
    if args.batch_size % 2 or not 0 <= args.warmup_steps < args.steps or args.rounds < 1:
        parser.error("--batch-size must be even, --warmup-steps below --steps, --rounds >= 1")
    return args


def write_params(work: Path, workers: int, args: argparse.Namespace) -> Path:
    import yaml

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["sample"].update(num_images=80, image_size=256)
    params["data"]["root"] = str(work / "sample")
    params["convert"]["num_shards"] = 2
    params["model"]["name"] = TEMPLATE
    params["train"].update(batch_size=args.batch_size, num_steps=args.steps, warmup_steps=10,
                           eval_every_n=0, checkpoint_every_n=args.steps, num_workers=workers)
    params["export"]["tflite"] = []
    params["mlflow"]["tracking_uri"] = f"sqlite:///{work / 'mlflow.db'}"
    path = work / f"params_{workers}.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def prepare(work: Path, args: argparse.Namespace) -> dict[int, Path]:
    """The sample in 2 shards and its config (rendered once); a params file per side."""
    params = {workers: write_params(work, workers, args) for workers in (1, 2)}
    python = sys.executable
    models.run_sample(params[1], work / "sample")
    models.sh([python, "-m", "pipeline", "convert", "--params", str(params[1]),
               "--output", str(work / "tfrecords")])
    models.sh([python, "-m", "pipeline", "configure", "--params", str(params[1]),
               "--data", str(work / "tfrecords"), "--output", str(work / "pipeline.config")])
    return params


def train(work: Path, params: Path, name: str, args: argparse.Namespace) -> dict:
    """One training through the train stage; its images/s, wall time and the load around it."""
    model_dir = work / name
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    models.sh([sys.executable, "-m", "pipeline", "train", "--params", str(params),
               "--config", str(work / "pipeline.config"), "--data", str(work / "tfrecords"),
               "--model-dir", str(model_dir), "--curves", str(model_dir / "curves.csv"),
               "--eval-curves", str(model_dir / "eval.csv"),
               "--metrics", str(model_dir / "metrics.json")])
    return {"images_per_second": models.steady_rate(model_dir / "train", args.warmup_steps,
                                                     args.batch_size),
            "wall_seconds": round(time.perf_counter() - start, 1),
            "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)}


def summarize(rounds: list[dict], args: argparse.Namespace) -> dict:
    ratios = [r["ratio"] for r in rounds]
    summary = {f"{w}_worker": {key: statistics.median(r[str(w)][key] for r in rounds)
                               for key in ("images_per_second", "wall_seconds")}
               for w in (1, 2)}
    summary.update(
        ratio_two_over_one=round(statistics.median(ratios), 3),
        ratio_range=[min(ratios), max(ratios)], rounds=rounds, steps=args.steps,
        warmup_steps=args.warmup_steps, global_batch=args.batch_size, cores=os.cpu_count(),
        max_load=max(r[s][k] for r in rounds for s in ("1", "2")
                     for k in ("load_before", "load_after")))
    return summary


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        work = Path(tmp)
        params = prepare(work, args)
        rounds = []
        for index in range(args.rounds):
            figures = {}
            for workers in (1, 2) if index % 2 == 0 else (2, 1):
                figures[str(workers)] = train(work, params[workers], f"w{workers}_{index}", args)
            figures["ratio"] = round(figures["2"]["images_per_second"]
                                     / figures["1"]["images_per_second"], 3)
            print(json.dumps({"round": index, **figures}), flush=True)
            rounds.append(figures)
    summary = summarize(rounds, args)
    print(f"1 worker {summary['1_worker']['images_per_second']} images/s, 2 workers "
          f"{summary['2_worker']['images_per_second']} images/s (medians of {args.rounds} "
          f"rounds); 2/1 = {summary['ratio_two_over_one']}; highest load average "
          f"{summary['max_load']} on {os.cpu_count()} cores")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
