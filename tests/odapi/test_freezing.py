"""Hook D, train.freeze_backbone_steps: the TF2 training step honours the config's
freeze_variables / update_trainable_variables (which model_lib_v2 ignores) while freezing is
active, and train_loop is split at step K (frozen before, trainable after)."""
from __future__ import annotations

import pytest

from pipeline.core import compat
from pipeline.odapi import freezing


@pytest.fixture
def config_with(tmp_path):
    def write(freeze_variables=(), update=()):
        lines = [f'  freeze_variables: "{p}"' for p in freeze_variables]
        lines += [f'  update_trainable_variables: "{p}"' for p in update]
        path = tmp_path / "pipeline.config"
        path.write_text("train_config {\n" + "\n".join(lines) + "\n}\n")
        return str(path)
    return write


class Model:
    """Stands for a detection model: named variables."""

    def __init__(self):
        import tensorflow as tf

        self.trainable_variables = [tf.Variable(1.0, name=n) for n in (
            "feature_extractor/model/conv1", "feature_extractor/FeatureMaps/top",
            "BoxPredictor/ClassHead")]


class FakeOdApi:
    """What the od_api fixture gives: ``start`` (the checkpoint step train_loop resumes from)
    and ``train(config, end)``, the (train_steps, variables trained) of each train_loop call."""

    start = 0
    train = None


@pytest.fixture
def od_api(monkeypatch, tmp_path):
    """model_lib_v2's train_loop and eager_train_step replaced by recorders: each train_loop
    call runs one eager_train_step and records (train_steps, names of the variables trained).
    The checkpoint step train_loop starts from is ``od_api.start``."""
    compat.apply()
    from object_detection import model_lib_v2

    from pipeline.odapi import training_hooks

    calls = []

    def train_loop(**kwargs):
        model_lib_v2.eager_train_step(Model())
        calls[-1].insert(0, kwargs["train_steps"])

    def eager_train_step(model, *args, **kwargs):
        calls.append([[v.name.split(":")[0] for v in model.trainable_variables]])

    monkeypatch.setattr(model_lib_v2, "train_loop", train_loop)
    monkeypatch.setattr(model_lib_v2, "eager_train_step", eager_train_step)
    monkeypatch.setattr(training_hooks, "save_final_checkpoint_after_train_loop", lambda: None)
    fake = FakeOdApi()
    monkeypatch.setattr(training_hooks, "checkpoint_step", lambda model_dir: fake.start)

    def train(config: str, end: int) -> list:
        calls.clear()
        model_lib_v2.train_loop(pipeline_config_path=config, model_dir=str(tmp_path),
                                train_steps=end)
        return [tuple(call) for call in calls]
    fake.train = train
    yield fake
    freezing.freeze_backbone(0)


ALL = ["feature_extractor/model/conv1", "feature_extractor/FeatureMaps/top",
       "BoxPredictor/ClassHead"]
UNFROZEN = ALL[1:]


def test_the_first_k_steps_train_without_the_frozen_variables(config_with, od_api):
    freezing.freeze_backbone(300)
    config = config_with(["feature_extractor/model/"])
    assert od_api.train(config, 800) == [(300, UNFROZEN), (800, ALL)]
    assert od_api.train(config, 200) == [(200, UNFROZEN)]  # a segment before K
    od_api.start = 300
    assert od_api.train(config, 800) == [(800, ALL)]  # resumed after K


def test_throughout_and_never(config_with, od_api):
    config = config_with(["feature_extractor/model/"])
    freezing.freeze_backbone(-1)
    assert od_api.train(config, 800) == [(800, UNFROZEN)]
    freezing.freeze_backbone(0)
    assert od_api.train(config, 800) == [(800, ALL)]


def test_update_trainable_variables_keeps_only_the_matching_ones(config_with, od_api):
    freezing.freeze_backbone(-1)
    assert od_api.train(config_with(update=["BoxPredictor"]), 10) == [
        (10, ["BoxPredictor/ClassHead"])]


def test_a_config_without_filters_trains_everything(config_with, od_api):
    freezing.freeze_backbone(-1)
    assert od_api.train(config_with(), 10) == [(10, ALL)]


@pytest.mark.parametrize("start, end, frozen_steps, expected", [
    (0, 800, 300, [(300, True), (800, False)]),
    (0, 300, 300, [(300, True)]),
    (300, 800, 300, [(800, False)]),
    (0, 800, -1, [(800, True)]),
    (0, 800, 0, [(800, False)]),
])
def test_segments(start, end, frozen_steps, expected):
    assert freezing.segments(start, end, frozen_steps) == expected
