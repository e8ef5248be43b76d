"""A training worker started by hand on one machine of a multi-machine cluster."""
import json

import pytest

from pipeline.core.errors import PipelineError
from pipeline.training import worker
from tests.training.test_loop import CONFIG


def test_a_worker_started_by_hand_takes_its_index_from_tf_config_and_its_schedule_from_the_config(
        tmp_path, monkeypatch):
    config = tmp_path / "p.config"
    config.write_text(CONFIG.format(steps=77))
    flags = [f"--pipeline_config_path={config}", f"--model_dir={tmp_path / 'train'}",
             "--num_workers=2"]
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(PipelineError, match="TF_CONFIG must be set"):
        worker.standalone_spec(flags)
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:1"]},
                                                "task": {"type": "worker", "index": 1}}))
    spec = worker.standalone_spec(flags)
    assert (spec["index"], spec["num_steps"], spec["batch_size"]) == (1, 77, 3)
    assert spec["argv"] == ["model_main_tf2", *flags] and spec["report"] is None
    assert worker.standalone_spec([*flags, "--num_train_steps=5"])["num_steps"] == 5
    with pytest.raises(PipelineError, match="--pipeline_config_path"):
        worker.standalone_spec(flags[1:])
