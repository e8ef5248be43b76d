"""Early stopping's patience (pipeline/training/early_stopping.py): evaluations without a
better best_metric, counted from the evaluation history."""
import pytest

from pipeline.training import early_stopping

MAP = "DetectionBoxes_Precision/mAP"
LOSS = "Loss/total_loss"


def history(name: str, values: list[float]) -> dict[str, dict[str, float]]:
    """Evaluations every 10 steps, keyed as eval_history.json keys them (out of order)."""
    return {str(10 * (i + 1)): {name: value} for i, value in reversed(list(enumerate(values)))}


@pytest.mark.parametrize("metric, name, values, patience, stops", [
    ("map", MAP, [0.1, 0.3, 0.2, 0.25], 2, True),
    ("map", MAP, [0.1, 0.3, 0.2, 0.25], 3, False),
    ("map", MAP, [0.1, 0.3, 0.2, 0.25], 0, False),  # 0: off
    ("map", MAP, [0.1, 0.2, 0.3, 0.4], 1, False),
    ("map", MAP, [0.3, 0.3], 1, True),  # a tie is no improvement (the earlier stays best)
    ("val_loss", LOSS, [1.0, 0.8, 0.9], 1, True),  # lower is better
    ("val_loss", LOSS, [1.0, 0.8, 0.9], 2, False),
    ("val_loss", LOSS, [1.0, 0.8, 0.7, 0.9, 0.95, 0.6], 3, False),  # improved again in time
])
def test_training_stops_after_patience_evaluations_without_improvement(
        metric, name, values, patience, stops):
    reason = early_stopping.stop_reason(history(name, values), metric, patience)
    assert (reason is not None) == stops


def test_the_reason_names_the_metric_the_count_and_the_best_step():
    reason = early_stopping.stop_reason(history(MAP, [0.1, 0.3, 0.2, 0.25]), "map", 2)
    assert reason == ("map has not improved for 2 evaluations (patience train.early_stopping: "
                      "2; best 0.3000 at step 20)")
    assert early_stopping.evaluations_since_best({}, "map") == (0, None)
    assert early_stopping.stop_reason({}, "map", 1) is None
