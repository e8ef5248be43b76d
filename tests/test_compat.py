"""The stack's compatibility shims (pipeline/compat.py)."""
import subprocess
import sys

import pytest

from pipeline import compat


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_od_api_protos_fail_without_the_shim_on_the_fast_protobuf_runtime():
    """Proves the shim is needed: if this starts passing, the shim can be dropped."""
    result = run_python("from object_detection.protos import pipeline_pb2")
    assert "Descriptors cannot be created directly" in result.stderr


def test_od_api_protos_load_on_the_fast_runtime_with_the_shim():
    result = run_python(
        "from pipeline import compat; compat.apply()\n"
        "from google.protobuf.internal import api_implementation\n"
        "from object_detection.protos import pipeline_pb2, string_int_label_map_pb2\n"
        "from google.protobuf import text_format\n"
        "c = text_format.Parse('model { ssd { num_classes: 3 } }',"
        " pipeline_pb2.TrainEvalPipelineConfig())\n"
        "print(api_implementation.Type(), c.model.ssd.num_classes,"
        " string_int_label_map_pb2.LVISFrequency.Name(1))\n")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["upb", "3", "FREQUENT"]


def test_tf_slim_control_flow_names_are_provided():
    compat.apply()
    from tensorflow.python.ops import control_flow_ops

    assert all(callable(getattr(control_flow_ops, n)) for n in ("case", "cond", "while_loop"))


@pytest.mark.parametrize("steps, expected", [(1000, 100), (30, 30), (250, 50), (97, 97),
                                             (101, 1), (1, 1)])
def test_steps_per_iteration_divides_num_steps(steps, expected):
    assert compat.steps_per_iteration(steps) == expected


@pytest.mark.parametrize("train_steps, restored, every_n, expected", [
    (800, 0, 200, 10), (30, 12, 1000, 2), (30, 12, 6, 6), (40, 10, 10, 10), (25, 0, 1000, 5), (97, 0, 1000, 1),
])
def test_resume_block_divides_the_restored_step_the_target_and_the_checkpoint_interval(
        train_steps, restored, every_n, expected):
    block = compat.resume_block_size(train_steps, restored, every_n)
    assert block == expected
    assert train_steps % block == 0 and restored % block == 0 and every_n % block == 0


def test_checkpoint_step_is_zero_without_checkpoints(tmp_path):
    assert compat.checkpoint_step(tmp_path) == 0
