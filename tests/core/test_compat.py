"""The stack's compatibility shims (pipeline/core/compat.py)."""
import subprocess
import sys

import pytest

from pipeline.core import compat


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


# --- shims 0, 8 and 9: TensorFlow >= 2.16 -------------------------------------------------------


def test_importing_pipeline_first_gives_keras_2_as_tf_keras():
    result = run_python("import os; os.environ.pop('TF_USE_LEGACY_KERAS', None)\n"
                        "import pipeline\nimport tensorflow as tf\n"
                        "print(os.environ['TF_USE_LEGACY_KERAS'], tf.keras.__name__)")
    assert result.returncode == 0, result.stderr[-2000:]
    flag, keras_module = result.stdout.split()
    assert flag == "1" and keras_module.startswith("tf_keras")


def test_a_stage_refuses_keras_3_with_a_clear_message():
    """TensorFlow imported before the package (so before TF_USE_LEGACY_KERAS): on TF >= 2.16
    tf.keras is Keras 3, and compat.apply() must say so instead of the OD API failing."""
    result = run_python("import os; os.environ.pop('TF_USE_LEGACY_KERAS', None)\n"
                        "import tensorflow as tf\n"
                        "if tf.keras.__name__.startswith('tf_keras') or "
                        "str(getattr(tf.keras, '__version__', '')).startswith('2.'):\n"
                        "    raise SystemExit('KERAS2')\n"
                        "from pipeline import compat\n"
                        "from pipeline.core.errors import PipelineError\n"
                        "try:\n    compat.apply()\nexcept PipelineError as err:\n"
                        "    print(err)\n")
    if "KERAS2" in result.stderr:
        pytest.skip("this TensorFlow's tf.keras is Keras 2 without the flag (TF < 2.16)")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "needs Keras 2" in result.stdout and "TF_USE_LEGACY_KERAS=1" in result.stdout


def test_od_api_modules_that_import_tf_estimator_import():
    compat.apply()
    from object_detection import inputs, model_lib  # both import tf.compat.v1.estimator
    from tensorflow.compat.v1 import estimator

    assert model_lib.tf_estimator is estimator and inputs.tf_estimator is estimator
    assert estimator.ModeKeys.TRAIN == "train" and estimator.ModeKeys.PREDICT == "infer"


def test_the_estimator_stand_in_names_what_is_missing():
    compat.apply()
    from tensorflow.compat.v1 import estimator

    if "pipeline.core.compat" not in (estimator.__doc__ or ""):
        pytest.skip("this TensorFlow still has tf.estimator")
    with pytest.raises(AttributeError, match="no Estimator"):
        estimator.Estimator  # noqa: B018


def test_model_builder_imports_without_tensorflow_io():
    compat.apply()
    from object_detection.builders import model_builder  # imports deepmac_meta_arch

    import tensorflow_io

    assert model_builder.build is not None
    if "pipeline.core.compat" in (tensorflow_io.__doc__ or ""):
        with pytest.raises(AttributeError, match="DeepMAC"):
            tensorflow_io.experimental  # noqa: B018
