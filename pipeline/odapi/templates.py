"""The model templates in ``configs/`` and their facts from ``configs/models.yaml``.

A template is ``configs/<name>.config`` (an OD API ``TrainEvalPipelineConfig`` written for
this project) plus one entry in ``configs/models.yaml``: its reference batch size and learning
rate (the learning rate is scaled linearly from them), and the TF2 model zoo archive with
COCO-trained weights for the same architecture and that archive's pinned sha256.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core import layout
from pipeline.core.errors import ParamsError
from pipeline.core.layout import CONFIGS_DIR
from pipeline.core.schema import build_dataclass, read_yaml

MODELS_FILE = CONFIGS_DIR / layout.MODELS_FILE
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ModelSpec:
    """One entry of configs/models.yaml (field rules are in the metadata)."""

    description: str
    reference_batch_size: int = field(metadata={"min": 1, "max": 65536})
    reference_learning_rate: float = field(metadata={"min": 1e-7, "max": 10.0})
    zoo_archive: str = ""
    sha256: str = ""

    def check(self) -> None:
        if self.sha256 and not SHA256_PATTERN.match(self.sha256):
            raise ParamsError(f"sha256 must be 64 lowercase hex digits or '', got {self.sha256!r}")
        if self.sha256 and not self.zoo_archive:
            raise ParamsError("sha256 is set but zoo_archive is empty")
        if "/" in self.zoo_archive or self.zoo_archive.endswith((".tar.gz", ".tgz")):
            raise ParamsError(
                f"zoo_archive is the archive's bare name (no path, no .tar.gz), got "
                f"{self.zoo_archive!r}")


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
            specs.append((str(name), build_dataclass(ModelSpec, entry, f"{name}.")))
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
