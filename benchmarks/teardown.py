"""The wait when a distributed tf.data input is torn down, with and without training hook B.

``model_lib_v2.train_loop`` feeds its model through ``tf.distribute``: a MultiDeviceIterator
whose per-device prefetch dataset gets tf.data's default options, autotuning included, and the
training step consumes it inside a ``tf.function``. When the loop returns, destroying that
iterator can wait for the autotune thread's sleep (up to 60 s). Each side runs in a process of
its own: a ``MirroredStrategy`` on the CPU, a small mapped and batched input distributed
through ``distribute_datasets_from_function`` and consumed inside a ``tf.function`` for
``--seconds``, then the time the function takes to return and drop the iterator. ``hooked``
applies :func:`pipeline.odapi.training_hooks.without_autotune_on_replica_prefetch` first;
``plain`` does not (its input has autotuning off too, as hook B gives the train input). Rounds
alternate the order. The wait depends on where the autotune thread is in its sleep, so one
round proves little: read the median and the spread.

Run from the repository root: ``python benchmarks/teardown.py`` (``--help`` for the options).
The last line printed is a JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIDES = ("plain", "hooked")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="one run per side each")
    parser.add_argument("--seconds", type=float, default=50.0,
                        help="how long each side consumes its input before returning")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # one child process
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.seconds <= 0:
        parser.error("--rounds must be >= 1 and --seconds > 0")
    return args


def consume_then_return(seconds: float, hooked: bool) -> dict:
    """Consume a distributed input for ``seconds`` inside a tf.function, return, time the end."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if hooked:
        sys.path.insert(0, str(ROOT))
        from pipeline.odapi import training_hooks

        training_hooks.without_autotune_on_replica_prefetch()
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])

    def dataset_fn(context):
        options = tf.data.Options()
        options.autotune.enabled = False  # as hook B builds the train input
        doubled = tf.data.Dataset.range(10**9).map(lambda x: tf.cast(x, tf.float32) * 2,
                                                   num_parallel_calls=tf.data.AUTOTUNE)
        return doubled.batch(4).prefetch(tf.data.AUTOTUNE).with_options(options)

    @tf.function
    def step(iterator):
        return strategy.run(tf.reduce_sum, args=(next(iterator),))

    def loop() -> int:  # the iterator lives in this frame only, as in train_loop
        iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
        batches, end = 0, time.monotonic() + seconds
        while time.monotonic() < end:
            step(iterator)
            batches += 1
            time.sleep(0.01)
        return batches

    start = time.monotonic()
    batches = loop()
    return {"batches": batches, "teardown_s": round(time.monotonic() - start - seconds, 2)}


def run_side(side: str, seconds: float) -> dict:
    """One side in a fresh process (the autotune threads are per process)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--side", side,
               "--seconds", str(seconds)]
    load = os.getloadavg()[0]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return {"side": side, **json.loads(output.splitlines()[-1]),
            "load": [round(load, 2), round(os.getloadavg()[0], 2)]}


def summarise(runs: list[dict]) -> dict:
    """Median and range of the teardown wait per side."""
    summary = {}
    for side in SIDES:
        waits = [run["teardown_s"] for run in runs if run["side"] == side]
        summary[side] = {"median_s": statistics.median(waits), "min_s": min(waits),
                         "max_s": max(waits), "runs": len(waits)}
    return summary


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.side:
        print(json.dumps(consume_then_return(args.seconds, args.side == "hooked")))
        return
    runs = []
    for round_index in range(args.rounds):
        order = SIDES if round_index % 2 == 0 else SIDES[::-1]
        for side in order:
            runs.append({"round": round_index, **run_side(side, args.seconds)})
            print(json.dumps(runs[-1]), flush=True)
    print(json.dumps({"seconds": args.seconds, "runs": runs, "summary": summarise(runs)}))


if __name__ == "__main__":
    main()
