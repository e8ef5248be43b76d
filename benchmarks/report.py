"""How much the report adds on top of the model: its throughput vs a bare loop, same run.

1. ``report.evaluate`` on the test split. Two figures: the ``images_per_second`` it reports
   (model calls plus output conversion), and the stricter wall-clock throughput of its whole
   inference loop (reading and parsing records, JPEG decoding, warm-up, model calls, ground
   truth, progress bar) -- test images / seconds spent in ``report._infer_all``;
2. a bare loop over the same test images, decoded beforehand, calling the same SavedModel's
   ``serving_default`` (freshly loaded, same warm-up calls) and fetching the four detection
   outputs, nothing else; wall clock from its first call to its last.

Goal: the report's wall-clock inference throughput >= 0.9x the bare loop. Prints both sides
and the ratios; the last line is a JSON object. Run from the repository root after
``dvc repro export`` (or point --model/--data elsewhere)::

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
KEYS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")


def timed_inference_loop(report) -> list[float]:
    """Wrap ``report._infer_all``; the returned list receives its wall seconds per call."""
    original, seconds = report._infer_all, []

    def infer_all(*args, **kwargs):
        start = time.perf_counter()
        result = original(*args, **kwargs)
        seconds.append(time.perf_counter() - start)
        return result

    report._infer_all = infer_all
    return seconds


def bare_loop(model_dir: Path, images: list, warmup: int) -> float:
    """Images per second of a loop doing only what it must: call the model, fetch its outputs.

    Timed like the report's loop: from the first call (of a freshly loaded model, so its
    one-off first-call cost counts on both sides) to the last, with the same warm-up calls.
    """
    import tensorflow as tf

    detect = tf.saved_model.load(str(model_dir / "saved_model")).signatures["serving_default"]
    tensors = [tf.constant(image[None]) for image in images]
    start = time.perf_counter()
    for index, tensor in enumerate(tensors):
        if index < warmup:
            detect(input_tensor=tensor)
        outputs = detect(input_tensor=tensor)
        [outputs[key].numpy() for key in KEYS]
    return len(tensors) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models/exported")
    parser.add_argument("--data", type=Path, default=ROOT / "data/tfrecords")
    parser.add_argument("--repeat", type=int, default=3, help="alternating rounds (best kept)")
    args = parser.parse_args()

    from pipeline import export, report
    from pipeline.params import ReportParams

    settings = ReportParams(registered_model="")
    files = report.find_test_records(args.data)
    examples = export.test_examples(args.data, 10**9)
    images = [export.decode_example_image(e) for e in examples]
    reported, bare = [], []
    loop_seconds = timed_inference_loop(report)
    with tempfile.TemporaryDirectory() as out:
        for _ in range(args.repeat):  # alternate so that load drift hits both sides alike
            metrics = report.evaluate(args.model, args.data, out, settings)
            reported.append(metrics["images_per_second"])
            bare.append(bare_loop(args.model, images, settings.warmup_images))
            print(f"round: report {reported[-1]:.1f} img/s (wall "
                  f"{len(images) / loop_seconds[-1]:.1f}), bare loop {bare[-1]:.1f} img/s",
                  flush=True)
    wall = len(images) / min(loop_seconds)
    result = {"test_images": len(images), "test_files": len(files),
              "report_wall_images_per_second": round(wall, 2),
              "report_reported_images_per_second": round(max(reported), 2),
              "bare_loop_images_per_second": round(max(bare), 2),
              "ratio_wall": round(wall / max(bare), 3),
              "ratio_reported": round(max(reported) / max(bare), 3), "goal_ratio": 0.9}
    print(f"report inference loop {result['report_wall_images_per_second']} img/s (wall clock) "
          f"vs bare loop {result['bare_loop_images_per_second']} img/s: ratio "
          f"{result['ratio_wall']} (goal >= 0.9); as reported in metrics.json "
          f"{result['report_reported_images_per_second']} img/s, ratio {result['ratio_reported']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
