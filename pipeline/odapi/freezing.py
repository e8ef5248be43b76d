"""Training hook D: ``train.freeze_backbone_steps``, the backbone frozen for the first K steps or
throughout, through the config's ``freeze_variables`` / ``update_trainable_variables``.

Problem: the OD API's TF1 loop applies those two fields, but ``model_lib_v2.eager_train_step``
(the TF2 loop) trains every trainable variable and ignores them. Hook, in two wrappers (installed
like the hooks of :mod:`pipeline.odapi.training_hooks`, over them):

- ``eager_train_step`` sees the detection model through :class:`_FilteredModel`, whose
  ``trainable_variables`` leaves out the variables the fields exclude (``re.match`` on the
  variable's name, as the TF1 loop's ``variables_helper.filter_variables``) while freezing is
  active. ``train_loop`` traces the step anew on each call, so the filter is read then.
- ``train_loop`` is split at step K: a call that crosses K trains to K frozen (hook A saves the
  checkpoint at K), then from K to its end unfrozen. The training loop needs no extra segment.

Drop when ``model_lib_v2`` honours ``freeze_variables`` itself.
"""
from __future__ import annotations

import logging
import re

from pipeline.odapi import training_hooks

log = logging.getLogger(__name__)

#: freeze_backbone_steps: -1 = throughout, 0 = never, K = the first K steps
THROUGHOUT = -1


class _State:
    steps = 0  # train.freeze_backbone_steps of the current training
    freeze: tuple[str, ...] = ()  # the config's freeze_variables
    update: tuple[str, ...] = ()  # the config's update_trainable_variables
    active = False


def freeze_backbone(steps: int) -> None:
    """Apply the trained config's variable filters for the first ``steps`` steps of the next
    ``train_loop`` calls (-1: throughout, 0: never; the filters come from the config)."""
    _State.steps, _State.active = steps, False
    if steps:
        _install()


def trainable(variables: list) -> list:
    """The variables the active filters let train (all of them when inactive): those matching
    an ``update_trainable_variables`` regex (if any), minus those matching a
    ``freeze_variables`` regex."""
    if not _State.active:
        return list(variables)
    kept = [v for v in variables if not _State.update or matches(v, _State.update)]
    return [v for v in kept if not matches(v, _State.freeze)]


def matches(variable, patterns: tuple[str, ...]) -> bool:
    """Whether ``re.match`` of one of ``patterns`` accepts the variable's name."""
    name = variable.name.split(":")[0]  # filter_variables reads op.name, unknown when eager
    return any(re.match(pattern, name) for pattern in patterns)


def read_filters(config_path: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(freeze_variables, update_trainable_variables) of a pipeline.config."""
    from object_detection.utils import config_util

    train_config = config_util.get_configs_from_pipeline_file(str(config_path))["train_config"]
    return tuple(train_config.freeze_variables), tuple(train_config.update_trainable_variables)


def segments(start: int, end: int, frozen_steps: int) -> list[tuple[int, bool]]:
    """(segment end, frozen) pairs training from ``start`` to ``end`` with the backbone frozen
    for the first ``frozen_steps`` steps (-1: throughout, 0: never)."""
    if frozen_steps == THROUGHOUT or end <= frozen_steps:
        return [(end, frozen_steps != 0)]
    if start < frozen_steps:
        return [(frozen_steps, True), (end, False)]
    return [(end, False)]


class _FilteredModel:
    """The detection model as ``eager_train_step`` sees it: everything forwarded, except that
    ``trainable_variables`` leaves the frozen ones out."""

    def __init__(self, model):
        object.__setattr__(self, "_model", model)

    def __getattr__(self, name):
        return getattr(self._model, name)

    def __setattr__(self, name, value):
        setattr(self._model, name, value)

    @property
    def trainable_variables(self):
        return trainable(self._model.trainable_variables)


def _install() -> None:
    from object_detection import model_lib_v2

    training_hooks.save_final_checkpoint_after_train_loop()  # hook A under this one (saves K)
    if not getattr(model_lib_v2.train_loop, "_freezes", False):
        model_lib_v2.train_loop = _split_train_loop(model_lib_v2.train_loop)
    if not getattr(model_lib_v2.eager_train_step, "_freezes", False):
        model_lib_v2.eager_train_step = _filtered_train_step(model_lib_v2.eager_train_step)


def _split_train_loop(original):
    def train_loop(*args, **kwargs):
        _State.freeze, _State.update = read_filters(kwargs["pipeline_config_path"])
        start = training_hooks.checkpoint_step(kwargs.get("model_dir"))
        plan = segments(start, kwargs["train_steps"], _State.steps)
        result = None
        for end, frozen in plan:
            _State.active = frozen and bool(_State.freeze or _State.update)
            log.info("training to step %d with the backbone %s", end,
                     "frozen" if _State.active else "trainable")
            result = original(*args, **{**kwargs, "train_steps": end})
        _State.active = False
        return result

    train_loop._freezes = True
    train_loop._saves_final_step = True  # hook A is installed under it: not again over it
    train_loop.od_api_original = original
    return train_loop


def _filtered_train_step(original):
    def eager_train_step(detection_model, *args, **kwargs):
        model = _FilteredModel(detection_model) if _State.active else detection_model
        return original(model, *args, **kwargs)

    eager_train_step._freezes = True
    # Hook C checks this flag on the function it finds: it is already under this one.
    eager_train_step._observed = getattr(original, "_observed", False)
    eager_train_step.od_api_original = original
    return eager_train_step
