"""The model templates in ``configs/`` and their facts from ``configs/models.yaml``.

A template is ``configs/<name>.config`` (an OD API ``TrainEvalPipelineConfig`` written for
this project) plus one entry in ``configs/models.yaml``: its reference batch size and learning
rate (the learning rate is scaled linearly from them), the TF2 model zoo archive with
COCO-trained weights for the same architecture and that archive's pinned sha256, the schedule
used when fine-tuning (from the zoo config's own values), the regexes naming its backbone's
variables (frozen by ``train.freeze_backbone_steps``) and the input sizes configure may derive
from the data (``input_sizes``: pipeline/odapi/data_defaults.py).
"""
from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Annotated

from pydantic import Field, StrictInt, StrictStr, field_validator, model_validator

from pipeline.core import layout
from pipeline.core.errors import ParamsError
from pipeline.core.layout import CONFIGS_DIR
from pipeline.core.schema import (FiniteFloat, Names, OptionalSha256, read_yaml, record,
                                  validate)

MODELS_FILE = CONFIGS_DIR / layout.MODELS_FILE


@record
class ModelSpec:
    """One entry of configs/models.yaml."""

    description: StrictStr
    reference_batch_size: Annotated[StrictInt, Field(ge=1, le=65536)]
    reference_learning_rate: Annotated[FiniteFloat, Field(ge=1e-7, le=10.0)]
    zoo_archive: StrictStr = ""
    sha256: OptionalSha256 = ""
    finetune_learning_rate_factor: Annotated[FiniteFloat, Field(ge=1e-4, le=1.0)] = 0.1
    finetune_warmup_fraction: Annotated[FiniteFloat, Field(ge=0.0, le=0.5)] = 0.05
    finetune_warmup_start_fraction: Annotated[FiniteFloat, Field(ge=0.0, le=1.0)] = 0.1
    backbone_variables: Names = ()
    input_sizes: tuple[Annotated[StrictInt, Field(ge=32, le=2048)], ...] = ()

    @field_validator("input_sizes")
    @classmethod
    def _ascending(cls, sizes: tuple[int, ...]) -> tuple[int, ...]:
        if list(sizes) != sorted(set(sizes)):
            raise ParamsError(f"input_sizes must be distinct and ascending, got {list(sizes)}")
        return sizes

    @field_validator("backbone_variables")
    @classmethod
    def _regexes(cls, patterns: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ParamsError(f"backbone_variables: {pattern!r} is not a regex ({err})")
        return patterns

    @field_validator("zoo_archive")
    @classmethod
    def _bare_name(cls, archive: str) -> str:
        if "/" in archive or archive.endswith((".tar.gz", ".tgz")):
            raise ParamsError(
                f"zoo_archive is the archive's bare name (no path, no .tar.gz), got {archive!r}")
        return archive

    @model_validator(mode="after")
    def _pin_needs_archive(self) -> ModelSpec:
        if self.sha256 and not self.zoo_archive:
            raise ParamsError("sha256 is set but zoo_archive is empty")
        return self


def load_specs(path: Path = MODELS_FILE) -> dict[str, ModelSpec]:
    """Every entry of ``configs/models.yaml``, validated; each must have its template file."""
    return dict(_load_specs_cached(path, path.stat().st_mtime_ns if path.exists() else 0))


@functools.lru_cache(maxsize=4)
def _load_specs_cached(path: Path, _mtime: int) -> tuple[tuple[str, ModelSpec], ...]:
    raw = read_yaml(path, "model list")
    if not isinstance(raw, dict):
        raise ParamsError(f"{path} must map template names to their facts")
    specs = []
    for name, entry in raw.items():
        try:
            specs.append((str(name), validate(ModelSpec, entry, f"{name}.")))
        except ParamsError as err:
            raise ParamsError(f"{path.name}: {err}") from err
        if not template_path(str(name), path.parent).is_file():
            raise ParamsError(f"{path.name} lists {name!r} but {name}.config is missing")
    return tuple(specs)


def template_path(name: str, configs_dir: Path = CONFIGS_DIR) -> Path:
    """``configs/<name>.config``."""
    return configs_dir / f"{name}.config"


def model_names() -> tuple[str, ...]:
    """Names of the templates users can pick with ``model.name``."""
    return tuple(sorted(load_specs()))


def spec_for(name: str) -> ModelSpec:
    """The facts of template ``name`` (a ParamsError listing the choices if unknown)."""
    specs = load_specs()
    if name not in specs:
        raise ParamsError(f"model.name must be one of {sorted(specs)}, got {name!r}")
    return specs[name]
