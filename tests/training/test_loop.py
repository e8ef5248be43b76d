"""The segmented training loop (pipeline/training/loop.py): model_main_tf2 flags, segments."""
import json
import subprocess
import sys

import pytest

from pipeline.training import loop


def test_default_argv_lets_model_main_use_mirrored_strategy_on_local_devices(tmp_path):
    argv = loop.model_main_argv(tmp_path / "p.config", tmp_path / "m", 300, 100)
    assert argv[0] == "model_main_tf2"
    assert f"--pipeline_config_path={tmp_path / 'p.config'}" in argv
    assert "--num_train_steps=300" in argv and "--checkpoint_every_n=100" in argv
    assert "--num_workers=1" in argv
    assert not any(a.startswith(("--use_tpu", "--tpu_name")) for a in argv)


# model_main_tf2's absl flags clash with exporter_main_v2's (both define pipeline_config_path),
# so they are parsed in a fresh interpreter, as the train stage's own process does.
_PARSE_MODEL_MAIN_FLAGS = """
import json, sys
from pipeline.core import compat
compat.apply()
from absl import flags
from object_detection import model_main_tf2  # noqa: F401 - defines the flags
flags.FLAGS(json.loads(sys.argv[1]))
print(json.dumps({k: flags.FLAGS[k].value for k in ("num_workers", "use_tpu", "tpu_name",
                                                      "num_train_steps")}))
"""


def parsed_model_main_flags(argv: list[str]) -> dict:
    result = subprocess.run([sys.executable, "-c", _PARSE_MODEL_MAIN_FLAGS, json.dumps(argv)],
                            capture_output=True, text=True, timeout=300, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_workers_and_tpu_become_model_main_flags_it_parses(tmp_path):
    argv = loop.model_main_argv(tmp_path / "p.config", tmp_path / "m", 10, 5, num_workers=4)
    parsed = parsed_model_main_flags(argv)
    assert parsed["num_workers"] == 4 and not parsed["use_tpu"]
    argv = loop.model_main_argv(tmp_path / "p.config", tmp_path / "m", 10, 5, tpu_name="tpu-1")
    parsed = parsed_model_main_flags(argv)
    assert parsed["use_tpu"] and parsed["tpu_name"] == "tpu-1"
    assert parsed["num_train_steps"] == 10


@pytest.mark.parametrize("start, steps, every, expected", [
    (0, 800, 200, [200, 400, 600, 800]),
    (300, 800, 200, [400, 600, 800]),
    (0, 50, 0, [50]),
    (0, 250, 100, [100, 200, 250]),
    (800, 800, 200, []),
])
def test_segments_end_at_each_evaluation_and_at_the_last_step(start, steps, every, expected):
    assert loop.segment_ends(start, steps, every) == expected
