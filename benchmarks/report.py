"""How much the report adds on top of the model: its throughput vs a bare loop, same run.

Both sides run the same freshly loaded SavedModel on the same test images, batch 1, with the
same warm-up (``report.warmup_images`` images run twice, first untimed). The one-off cost of a
loaded SavedModel's first calls (seconds, graph instantiation) would otherwise dominate a small
test split, so both are measured in steady state, after the warm-up images:

1. the report (``report.evaluate``): wall clock from the start of the first timed model call to
   the end of the last one. That window includes everything the report does between calls:
   reading and parsing records, JPEG decoding, ground-truth bookkeeping, the progress bar;
2. a bare loop over the same images, decoded beforehand, that only calls the project's one
   runner (:class:`pipeline.odapi.detector.Detector`: ``serving_default``, the fetch of the four
   detection outputs and their trimming), as the report does; the same window.

Goal: report >= 0.9x the bare loop. Also printed: the ``images_per_second`` that the report
writes to ``metrics.json`` (model calls only) and the bare loop's equivalent, and within each
report run its loop's wall-clock throughput over its model-call throughput (free of the
between-runs noise of a shared machine). Rounds alternate
between the two sides (best of each kept) so that load drift on a shared machine hits both.
The last line is a JSON object. Run from the repository root after ``dvc repro export``::

    python benchmarks/report.py [--model models/exported] [--data data/tfrecords] [--repeat 3]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def record_model_calls(detector) -> list[tuple[float, float]]:
    """Wrap ``detector.Detector.__call__``; the returned list receives (start, end) per call."""
    original, calls = detector.Detector.__call__, []

    def call(self, inputs):
        start = time.perf_counter()
        result = original(self, inputs)
        calls.append((start, time.perf_counter()))
        return result

    detector.Detector.__call__ = call
    return calls


def report_round(report, args, settings, calls: list) -> tuple[float, float]:
    """(steady-state wall img/s, reported images_per_second) of one report run."""
    calls.clear()  # also drops the bare loop's calls: it times itself
    with tempfile.TemporaryDirectory() as out:
        metrics = report.evaluate(args.model, args.data, out, settings)
    timed = calls[2 * settings.warmup_images:]  # each warm-up image is called twice
    images = len(timed) - 1  # images started after the first timed call's start
    return images / (timed[-1][1] - timed[0][1]), metrics["images_per_second"]


def bare_round(model_dir: Path, images: list, warmup: int) -> tuple[float, float]:
    """(steady-state wall img/s, img/s over the model calls alone) of a bare loop."""
    from pipeline.odapi.detector import Detector

    detector = Detector.load(model_dir)
    tensors = [detector.image_input(image) for image in images]
    ends, call_seconds = [], 0.0
    for index, tensor in enumerate(tensors):
        if index < warmup:
            detector(tensor)
        start = time.perf_counter()
        detector(tensor)
        ends.append(time.perf_counter())
        call_seconds += ends[-1] - start
    steady = ends[warmup:]
    return (len(steady) - 1) / (steady[-1] - steady[0]), len(tensors) / call_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models/exported")
    parser.add_argument("--data", type=Path, default=ROOT / "data/tfrecords")
    parser.add_argument("--repeat", type=int, default=3, help="alternating rounds (best kept)")
    args = parser.parse_args()

    from pipeline.core.params import ReportParams
    from pipeline.odapi import detector
    from pipeline.odapi.export import test_examples
    from pipeline.stages import report

    settings = ReportParams(registered_model="", sample_images=0, worst_images=0)
    images = [detector.decode_example_image(e) for e in test_examples(args.data, 10**9)]
    calls = record_model_calls(detector)
    rounds = []
    for _ in range(args.repeat):
        rounds.append((*report_round(report, args, settings, calls),
                       *bare_round(args.model, images, settings.warmup_images)))
        print("round: report {:.1f} img/s (metrics.json {:.1f}), bare loop {:.1f} img/s "
              "(model calls {:.1f})".format(*rounds[-1]), flush=True)
    best = [max(r[i] for r in rounds) for i in range(4)]
    result = {"test_images": len(images), "rounds": args.repeat,
              "report_images_per_second": round(best[0], 2),
              "bare_loop_images_per_second": round(best[2], 2),
              "ratio": round(best[0] / best[2], 3), "goal_ratio": 0.9,
              "metrics_json_images_per_second": round(best[1], 2),
              "bare_loop_model_calls_images_per_second": round(best[3], 2),
              "ratio_model_calls": round(best[1] / best[3], 3),
              # Paired rounds: the median of per-round ratios resists a noisy shared machine.
              "ratio_median_of_rounds": round(
                  sorted(r[0] / r[2] for r in rounds)[len(rounds) // 2], 3),
              # Same run, no noise between sides: the report's loop vs its own model calls.
              "report_wall_over_its_model_calls": round(
                  sorted(r[0] / r[1] for r in rounds)[len(rounds) // 2], 3)}
    print(f"report {result['report_images_per_second']} img/s vs bare loop "
          f"{result['bare_loop_images_per_second']} img/s (steady state, wall clock): ratio "
          f"{result['ratio']} (goal >= 0.9), median of per-round ratios "
          f"{result['ratio_median_of_rounds']}; model calls only: "
          f"{result['metrics_json_images_per_second']} vs "
          f"{result['bare_loop_model_calls_images_per_second']} img/s, ratio "
          f"{result['ratio_model_calls']}; within each report run, loop wall clock / model "
          f"calls (median): {result['report_wall_over_its_model_calls']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
