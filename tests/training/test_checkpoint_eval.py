"""The best checkpoint's choice (pipeline/training/checkpoint_eval.py)."""
from pipeline.training import checkpoint_eval
from tests.training.test_curves import _metrics


def test_best_is_chosen_by_the_metric_and_its_direction():
    assert checkpoint_eval.is_better("map", _metrics(0.5, 1.0), _metrics(0.4, 0.5))
    assert not checkpoint_eval.is_better("val_loss", _metrics(0.5, 1.0), _metrics(0.4, 0.5))
    assert checkpoint_eval.is_better("val_loss", _metrics(0.1, 0.4), _metrics(0.4, 0.5))
    assert not checkpoint_eval.is_better("map", _metrics(0.4, 1.0), _metrics(0.4, 0.5))  # tie
    assert checkpoint_eval.is_better("map", _metrics(0.0, 1.0), None)
