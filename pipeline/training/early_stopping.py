"""Early stopping (``train.early_stopping``): training stops after that many evaluations in a
row without a better ``train.best_metric`` (a patience counted in evaluations, as Keras' and
Ultralytics' ``patience``). Better means what picks the best checkpoint
(:func:`pipeline.training.checkpoint_eval.is_better`: ties keep the earlier checkpoint), so the
exported checkpoint is the one the count starts from. A function of the evaluation history
only: a resumed run decides as the interrupted one would have.
"""
from __future__ import annotations

from pipeline.training import checkpoint_eval


def evaluations_since_best(history: dict[str, dict[str, float]],
                           metric: str) -> tuple[int, str | None]:
    """How many evaluations of ``history`` (step -> metrics) came after the best one on
    ``metric``, and the best one's step (None for an empty history)."""
    best_step, since = None, 0
    for step in sorted(history, key=int):
        best = history[best_step] if best_step is not None else None
        if checkpoint_eval.is_better(metric, history[step], best):
            best_step, since = step, 0
        else:
            since += 1
    return since, best_step


def stop_reason(history: dict[str, dict[str, float]], metric: str, patience: int) -> str | None:
    """Why training stops now (``patience`` evaluations without improvement), or None to go
    on; ``patience`` 0 never stops."""
    if not patience:
        return None
    since, best_step = evaluations_since_best(history, metric)
    if since < patience:
        return None
    value = history[best_step][checkpoint_eval.METRICS[metric][0]]
    plural = "" if since == 1 else "s"
    return (f"{metric} has not improved for {since} evaluation{plural} (patience "
            f"train.early_stopping: {patience}; best {value:.4f} at step {best_step})")
