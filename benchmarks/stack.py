"""Training throughput on the old stack vs the new one: same config, same data, alternating rounds.

The old side is the project as it was at ``--old-rev`` (default: the last commit on the
TensorFlow 2.15 lock) with that commit's ``requirements.lock`` installed in a Python 3.11
environment (``--old-venv``, created when missing); the new side is this checkout on the
interpreter running this script (``make benchmark-stack`` uses the project's ``.venv``).
Both train the same ``pipeline.config`` (the default template, rendered once by this
checkout's configure stage) on the same TFRecords of the built-in sample, through each side's
own train stage segment (``benchmarks/models.py``'s ``train_stage_segment``: the stage's monitor
and ``model_main_tf2`` flags). Two interpreters cannot share a process, so each training runs in
a fresh process; rounds alternate the order (old, new, new, old, ...) and each round gives a
paired ratio of steady-state images/s (steps after ``--warmup-steps``). Goal: the median paired
ratio new / old >= 0.97. The load average is printed before and after each training.

Run from the repository root: ``python benchmarks/stack.py`` (``--help`` for the options).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OLD_REV = "2ccc7c6"  # last commit on the TF 2.15 / Python 3.11 lock (requirements.lock)
GOAL = 0.97


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old-rev", default=OLD_REV, help=f"old side's commit ({OLD_REV})")
    parser.add_argument("--old-venv", type=Path, default=ROOT / ".venv-old-stack",
                        help="old side's environment, created from the old lock when missing")
    parser.add_argument("--old-python", default="python3.11",
                        help="interpreter for a new --old-venv (default python3.11)")
    parser.add_argument("--rounds", type=int, default=6, help="one training per side each")
    parser.add_argument("--steps", type=int, default=300, help="steps per training")
    parser.add_argument("--warmup-steps", type=int, default=100,
                        help="steps left out of each training's rate (tracing, warm-up)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--worker", nargs=3, metavar=("SRC", "CONFIG", "MODEL_DIR"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.warmup_steps >= args.steps:
        parser.error("--rounds must be >= 1 and --warmup-steps below --steps")
    return args


def run_worker(args: argparse.Namespace) -> None:
    """One training through the train stage segment of the checkout ``SRC``; print images/s."""
    src, config, model_dir = (Path(p) for p in args.worker)
    # That checkout's package, then its benchmarks/models.py, both before this script's own
    # folder (sys.path[0]); the package first: benchmarks/pipeline.py would shadow it.
    sys.path[:0] = [str(src), str(src / "benchmarks")]
    import pipeline  # that checkout's (the new one sets TF_USE_LEGACY_KERAS)

    if not Path(pipeline.__file__).resolve().is_relative_to(src.resolve()):
        # An editable install of another checkout in that environment wins over sys.path.
        sys.exit(f"the old side imported {pipeline.__file__}, not {src}'s package: uninstall "
                 f"the project from {sys.prefix} (pip uninstall od-pipeline)")
    import models  # that checkout's benchmarks/models.py

    models.train_stage_segment(config, model_dir, args.steps, args.steps, args.batch_size)
    rate = models.steady_rate(model_dir / "train", args.warmup_steps, args.batch_size)
    print(json.dumps({"images_per_second": rate}))


def sh(cmd: list, cwd: Path = ROOT, env: dict | None = None) -> str:
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})})
    if result.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed:\n{result.stdout[-3000:]}\n"
                 f"{result.stderr[-3000:]}")
    return result.stdout


def old_side(args: argparse.Namespace, src: Path) -> Path:
    """The old side's python: a git worktree at ``--old-rev`` checked out in ``src`` and its
    environment (created from that commit's requirements.lock when missing)."""
    sh(["git", "worktree", "add", "--detach", src, args.old_rev])
    python = args.old_venv / "bin" / "python"
    if not python.exists():
        print(f"creating {args.old_venv} from {args.old_rev}:requirements.lock", flush=True)
        sh([args.old_python, "-m", "venv", args.old_venv])
        sh([python, "-m", "pip", "install", "--quiet", "-r", src / "requirements.lock"])
    return python


def prepare(work: Path, batch_size: int, steps: int) -> Path:
    """The sample's TFRecords and the default template's config, by this checkout's stages."""
    sys.path.append(str(ROOT / "benchmarks"))
    import models

    models.prepare_data(work)
    return models.configure(work, "ssd_mobilenet_v2_fpnlite_cpu", batch_size, steps)


def train(python: Path, src: Path, config: Path, model_dir: Path,
          args: argparse.Namespace) -> dict:
    load_before = os.getloadavg()[0]
    out = sh([python, Path(__file__).resolve(), "--worker", src, config, model_dir,
              "--steps", args.steps, "--warmup-steps", args.warmup_steps,
              "--batch-size", args.batch_size], env={"PYTHONPATH": str(src)})
    rate = json.loads(out.strip().splitlines()[-1])["images_per_second"]
    return {"images_per_second": rate, "load_before": round(load_before, 2),
            "load_after": round(os.getloadavg()[0], 2)}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        run_worker(args)
        return
    with tempfile.TemporaryDirectory(prefix="bench-stack-") as tmp:
        work = Path(tmp)
        old_src = work / "old-src"
        try:
            old_python = old_side(args, old_src)
            config = prepare(work, args.batch_size, args.steps)
            sides = {"old": (old_python, old_src), "new": (Path(sys.executable), ROOT)}
            rounds = []
            for index in range(args.rounds):
                figures = {}
                for side in ("old", "new") if index % 2 == 0 else ("new", "old"):
                    figures[side] = train(*sides[side], config, work / f"{side}_{index}", args)
                figures["ratio"] = round(figures["new"]["images_per_second"]
                                         / figures["old"]["images_per_second"], 3)
                print(json.dumps({"round": index, **figures}), flush=True)
                rounds.append(figures)
        finally:  # also when the old environment could not be built
            if old_src.exists():
                sh(["git", "worktree", "remove", "--force", old_src])
    ratios = [r["ratio"] for r in rounds]
    summary = {side: statistics.median(r[side]["images_per_second"] for r in rounds)
               for side in ("old", "new")}
    summary.update(ratio=statistics.median(ratios), ratio_range=[min(ratios), max(ratios)],
                   max_load=max(max(r[s]["load_before"], r[s]["load_after"]) for r in rounds
                                for s in ("old", "new")),
                   cores=os.cpu_count(), steps=args.steps, batch_size=args.batch_size)
    summary["goal_met"] = summary["ratio"] >= GOAL
    print(f"old stack {summary['old']} images/s, new stack {summary['new']} images/s (medians); "
          f"median paired ratio new/old {summary['ratio']} (range {min(ratios)}-{max(ratios)}, "
          f"goal >= {GOAL}); highest load average {summary['max_load']} on {os.cpu_count()} "
          "cores")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
