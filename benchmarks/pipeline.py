"""Time the whole pipeline on the default params, as a user runs it.

1. ``dvc repro -f``: every stage from the sample generator to the report (goal: <= 600 s on
   2 cores, with ``map_50`` >= 0.9 on the sample's test split);
2. a second ``dvc repro`` with nothing changed (goal: no stage runs, <= 5 s).

Prints one line per stage with its wall time, then as its last line a JSON object with the
figures. Run from the repository root with the environment active: ``python benchmarks/pipeline.py``
(or ``make benchmark``).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGE_LINE = re.compile(r"^Running stage '([^']+)'")


def run_dvc(args: list[str]) -> tuple[float, dict[str, float], str]:
    """Run dvc, streaming its output; return total wall seconds, seconds per stage, output."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    start = last = time.perf_counter()
    stages: dict[str, float] = {}
    current, lines = None, []
    proc = subprocess.Popen(["dvc", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    for line in proc.stdout:
        lines.append(line)
        match = STAGE_LINE.match(line)
        if match:
            now = time.perf_counter()
            if current:
                stages[current] = now - last
            current, last = match.group(1), now
            print(f"  running {current} ...", flush=True)
    if proc.wait() != 0:
        sys.exit("dvc failed:\n" + "".join(lines[-60:]))
    end = time.perf_counter()
    if current:
        stages[current] = end - last
    return end - start, stages, "".join(lines)


def main() -> None:
    # models/train is a DVC `persist` output: `dvc repro -f` keeps it, and train would resume
    # from its finished checkpoints instead of training from scratch.
    shutil.rmtree(ROOT / "models" / "train", ignore_errors=True)
    full, stages, _ = run_dvc(["repro", "-f"])
    for stage, seconds in stages.items():
        print(f"{stage:>10}: {seconds:7.1f} s")
    metrics = json.loads((ROOT / "reports" / "metrics.json").read_text())
    noop, noop_stages, output = run_dvc(["repro"])
    print(f"dvc repro -f: {full:.1f} s; map_50 {metrics['map_50']:.3f}; "
          f"second dvc repro: {noop:.2f} s, stages run: {len(noop_stages)}")
    print(json.dumps({
        "repro_force_seconds": round(full, 1),
        "stage_seconds": {k: round(v, 1) for k, v in stages.items()},
        "map": metrics["map"], "map_50": metrics["map_50"],
        "latency_ms_p50": metrics["latency_ms"]["p50"],
        "noop_repro_seconds": round(noop, 2),
        "noop_stages_run": len(noop_stages),
        "goals_met": full <= 600 and metrics["map_50"] >= 0.9 and noop <= 5 and not noop_stages,
    }))


if __name__ == "__main__":
    main()
