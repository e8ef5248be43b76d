"""What the benchmarks share: throw-away copies of the product, and ``dvc`` runs timed per stage.

Import it from a benchmark script (its folder is ``sys.path[0]`` when the script runs):
``import projects``.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BCCD = ROOT.parent / "shared" / "datasets" / "bccd_voc" / "BCCD"
STAGE_LINE = re.compile(r"^Running stage '([^']+)'", re.M)
#: The lines of a failed dvc run's output shown when a benchmark stops.
FAILURE_TAIL_LINES = 80


@dataclass(frozen=True)
class DvcRun:
    """One ``dvc`` run: its wall seconds, the seconds of each stage it ran, its output."""

    seconds: float
    stages: dict[str, float]
    output: str


def make_project(directory: Path, overrides: dict) -> Path:
    """A copy of the product (dvc.yaml, code, templates) with its own params and DVC repo;
    ``overrides``: ``{section: {key: value}}`` on top of this checkout's params.yaml. Its MLflow
    runs go to its own ``mlflow.db``."""
    directory.mkdir(parents=True)
    shutil.copy(ROOT / "dvc.yaml", directory)
    for name in ("pipeline", "configs"):
        shutil.copytree(ROOT / name, directory / name, ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in overrides.items():
        params[section].update(values)
    params["mlflow"]["tracking_uri"] = f"sqlite:///{directory / 'mlflow.db'}"
    (directory / "params.yaml").write_text(yaml.safe_dump(params))
    run_dvc(["init", "--no-scm", "-q"], directory)
    return directory


def run_dvc(args: list[str], cwd: Path = ROOT, *, echo: bool = False) -> DvcRun:
    """Run ``dvc`` in ``cwd`` with this Python's environment first on PATH, streaming its
    output (``echo``: print each stage as it starts); exit with its last lines when it fails.
    In a project copy (``cwd`` is not this checkout) MLFLOW_TRACKING_URI is dropped, so the
    copy records into its own database (its params), never into the user's server."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    if Path(cwd).resolve() != ROOT:
        env.pop("MLFLOW_TRACKING_URI", None)
    start = last = time.perf_counter()
    stages: dict[str, float] = {}
    current, lines = None, []
    proc = subprocess.Popen(["dvc", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    for line in proc.stdout:
        lines.append(line)
        match = STAGE_LINE.match(line)
        if match:
            now = time.perf_counter()
            if current:
                stages[current] = now - last
            current, last = match.group(1), now
            if echo:
                print(f"  running {current} ...", flush=True)
    if proc.wait() != 0:
        sys.exit(f"dvc {' '.join(args)} failed in {cwd}:\n" + "".join(lines[-FAILURE_TAIL_LINES:]))
    end = time.perf_counter()
    if current:
        stages[current] = end - last
    return DvcRun(end - start, stages, "".join(lines))


def params_overrides(pairs: Sequence[str]) -> dict[str, dict]:
    """``["train.num_steps=60"]`` -> ``{"train": {"num_steps": 60}}`` (values read as YAML)."""
    overrides: dict[str, dict] = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        section, dot, name = key.partition(".")
        if not (separator and dot and section and name):
            raise SystemExit(f"--ours-params: expected SECTION.KEY=VALUE, got {pair!r}")
        overrides.setdefault(section, {})[name] = yaml.safe_load(value)
    return overrides


def merged(*overrides: Mapping[str, dict]) -> dict[str, dict]:
    """Section-wise union of params overrides (later ones win)."""
    result: dict[str, dict] = {}
    for override in overrides:
        for section, values in override.items():
            result.setdefault(section, {}).update(values)
    return result


def report_scores(project: Path) -> dict:
    """The report stage's test scores in ``project`` (3 decimals): mAP, mAP@0.5, AP75 and
    AP@0.5 per class."""
    # A literal path: a script in benchmarks/ sees benchmarks/pipeline.py as `pipeline`.
    metrics = json.loads((project / "reports" / "metrics.json").read_text())
    return {**{key: round(metrics[key], 3) for key in ("map", "map_50", "map_75")},
            "ap50_per_class": {k: round(v["ap50"], 3) for k, v in metrics["per_class"].items()}}
