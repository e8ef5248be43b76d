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
import shutil
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent))
from projects import ROOT, run_dvc  # noqa: E402  (benchmarks/projects.py)


def main() -> None:
    # models/train is a DVC `persist` output: `dvc repro -f` keeps it, and train would resume
    # from its finished checkpoints instead of training from scratch.
    shutil.rmtree(ROOT / "models" / "train", ignore_errors=True)
    forced = run_dvc(["repro", "-f"], echo=True)
    full, stages = forced.seconds, forced.stages
    for stage, seconds in stages.items():
        print(f"{stage:>10}: {seconds:7.1f} s")
    metrics = json.loads((ROOT / "reports" / "metrics.json").read_text())
    again = run_dvc(["repro"], echo=True)
    noop, noop_stages = again.seconds, again.stages
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
