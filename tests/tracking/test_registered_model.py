"""The registered model outside the repository: a clean interpreter that cannot import
``pipeline`` loads it from the registry and predicts; ``mlflow models serve`` answers one HTTP
request with named detections."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from pipeline.core.params import MlflowParams
from pipeline.tracking import registry
from tests.paths import ROOT
from tests.tracking.test_registry import _ConstantDetector

#: Run by every interpreter of the test (through PYTHONPATH): the project is installed in the
#: environment as an editable package, so its import hook is removed to make the interpreter
#: as clean as one on another machine.
HIDE_PROJECT = """
import sys
sys.meta_path[:] = [f for f in sys.meta_path
                    if not getattr(f, "__module__", "").startswith("__editable__")]
"""

LOAD_AND_PREDICT = """
import importlib.util, json, sys
import numpy as np
import mlflow
assert importlib.util.find_spec("pipeline") is None, "pipeline is importable"
model = mlflow.pyfunc.load_model("models:/detector@champion")
outputs = model.predict(np.zeros((2, 24, 24, 3), np.uint8))
print(json.dumps({"names": outputs["detection_class_names"].tolist(),
                  "scores": outputs["detection_scores"].tolist(),
                  "signature": model.metadata.signature is not None,
                  "example": model.metadata.saved_input_example_info is not None}))
"""


@pytest.fixture()
def registered(tmp_path, monkeypatch) -> dict[str, str]:
    """A constant detector registered as ``detector`` (champion); the environment to reach it."""
    export_dir = tmp_path / "export"
    module = _ConstantDetector()
    tf.saved_model.save(module, str(export_dir / "saved_model"),
                        signatures={"serving_default": module.serve})
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    registry.register(MlflowParams(experiment="outside", tracking_uri=uri), "detector", None,
                      export_dir, {"map": 0.5}, "A", {1: "raccoon", 2: "kangaroo"})
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(HIDE_PROJECT)
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return {**environment, "PYTHONPATH": str(hide), "MLFLOW_TRACKING_URI": uri,
            "MLFLOW_DISABLE_TELEMETRY": "true"}


def _outside(tmp_path: Path) -> Path:
    directory = tmp_path / "elsewhere"
    directory.mkdir(exist_ok=True)
    assert not directory.resolve().is_relative_to(ROOT.resolve())
    return directory


@pytest.mark.slow
def test_registered_model_loads_and_serves_without_the_repository(registered, tmp_path):
    cwd = _outside(tmp_path)
    result = subprocess.run([sys.executable, "-c", LOAD_AND_PREDICT], cwd=cwd, env=registered,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded == {"names": [["raccoon"], ["raccoon"]], "scores": [[pytest.approx(0.9)]] * 2,
                      "signature": True, "example": True}

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/detector@champion",
         "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        cwd=cwd, env=registered, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        _wait_until_up(server, f"http://127.0.0.1:{port}/ping")
        image = np.full((1, 40, 30, 3), 127, np.uint8)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", method="POST",
            data=json.dumps({"inputs": image.tolist()}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            predictions = json.loads(response.read())["predictions"]
    finally:
        with contextlib.suppress(ProcessLookupError):  # the server and its workers
            os.killpg(server.pid, signal.SIGTERM)
        server.communicate(timeout=60)
    assert predictions["detection_class_names"] == [["raccoon"]]
    assert predictions["detection_classes"] == [[1.0]]
    assert predictions["num_detections"] == [1.0]


def _wait_until_up(server: subprocess.Popen, url: str, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"mlflow models serve exited: {server.stdout.read()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"mlflow models serve not up after {timeout_s} s")
