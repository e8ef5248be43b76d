"""Typed, validated parameters read from ``params.yaml``.

Every stage loads the whole file through :func:`load_params`, so a bad key anywhere stops
the run before any work is done. Each section is a frozen pydantic dataclass
(:data:`pipeline.core.schema.record`); the rules of a field (type, range, choices) are
declared beside it, so that the error message names the key, the value and what is allowed.
Unknown keys are errors, never ignored. Lists of names (shapes, augmentations, TFLite
precisions, templates) come from the modules that own them.
"""
from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, StrictInt, StrictStr, field_validator, model_validator

from pipeline.core import layout
from pipeline.core.errors import ParamsError
from pipeline.core.layout import PROJECT_ROOT
from pipeline.core.schema import (FiniteFloat, Names, OptionalSha256, members_of, read_yaml,
                                  record, validate)
from pipeline.data.shapes import SHAPES
from pipeline.odapi.augmentations import AUGMENTATIONS, NO_AUGMENTATION
from pipeline.odapi.tflite_precisions import TFLITE_PRECISIONS


#: The ``json_schema_extra`` key of a field that configure may derive from the data report
#: (pipeline/odapi/data_defaults.py): the value of the field that asks for the derivation.
DERIVE_WHEN = "derive_when"


def derivable(default: Any, *, derive_when: Any = None, **rules: Any) -> Any:
    """A field configure derives from the data while it equals ``derive_when`` (by default its
    ``default``); any other value is *pinned* by the user and always wins (:func:`pinned`)."""
    asks = default if derive_when is None else derive_when
    return Field(default, json_schema_extra={DERIVE_WHEN: asks}, **rules)


def pinned(section: Any, name: str) -> Any | None:
    """``section.<name>`` when the user pinned it, None when its value asks configure to
    derive it from the data. Only fields declared with :func:`derivable` have an answer."""
    extra = type(section).__pydantic_fields__[name].json_schema_extra or {}
    if DERIVE_WHEN not in extra:
        raise KeyError(f"{type(section).__name__}.{name} is not derived from the data")
    value = getattr(section, name)
    return None if value == extra[DERIVE_WHEN] else value


def available_models() -> tuple[str, ...]:
    """Names of the templates users can pick: ``configs/<name>.config`` listed in models.yaml."""
    from pipeline.odapi import templates as zoo

    return zoo.model_names()


@record
class SampleParams:
    """The built-in synthetic dataset (stage ``sample``)."""

    num_images: StrictInt = Field(500, ge=10, le=100_000)
    image_size: StrictInt = Field(256, ge=64, le=2048)
    classes: Annotated[Names, members_of(SHAPES, "shape")] = ("circle", "square", "triangle")
    max_objects: StrictInt = Field(6, ge=1, le=100)
    val_fraction: FiniteFloat = Field(0.08, ge=0.0, le=0.5)
    test_fraction: FiniteFloat = Field(0.12, ge=0.0, le=0.5)
    seed: StrictInt = Field(0, ge=0)

    @field_validator("classes")
    @classmethod
    def _distinct(cls, classes: tuple[str, ...]) -> tuple[str, ...]:
        if len(classes) < 1 or len(set(classes)) != len(classes):
            raise ParamsError(
                f"sample.classes must be a non-empty list of distinct names, got {list(classes)}")
        return classes


@record
class DataParams:
    """Where the dataset to convert lives, in which format, and the conversion policies."""

    format: Literal["voc", "coco", "yolo"] = "voc"
    root: StrictStr = str(layout.SAMPLE_DIR)
    coco_annotation_file: StrictStr = "_annotations.coco.json"
    classes: Names = ()
    unknown_classes: Literal["skip", "error"] = "skip"
    size_mismatch: Literal["skip", "rescale"] = "skip"
    val_fraction: FiniteFloat = Field(0.1, ge=0.0, le=0.5)
    test_fraction: FiniteFloat = Field(0.1, ge=0.0, le=0.5)

    @field_validator("root")
    @classmethod
    def _dataset_folder(cls, root: str) -> str:
        if not root.strip():
            raise ParamsError("data.root must be a non-empty path")
        _check_dataset_root(root)
        return root


#: Stages whose outputs are datasets ``data.root`` may name; every other stage's outputs (and
#: the folders holding them) must stay out of the dataset convert reads.
_DATASET_STAGES = ("sample",)


def _check_dataset_root(root: str) -> None:
    """Refuse a ``data.root`` that is the filesystem root, the project or a folder holding the
    pipeline's outputs: convert would read the whole disk, or its own outputs as data."""
    if "://" in root:  # a remote dataset (gs://, s3://): Beam's FileSystems reads it
        return
    path = Path(root).expanduser().resolve()
    if path == Path(path.anchor):
        raise ParamsError(f"data.root must be a dataset folder, not the filesystem root: {root!r}")
    if PROJECT_ROOT.is_relative_to(path):
        raise ParamsError(f"data.root must be a dataset folder, not the project ({PROJECT_ROOT}) "
                          f"or a folder containing it: {root!r}")
    held = sorted(out for out in _pipeline_outputs() if (PROJECT_ROOT / out).is_relative_to(path))
    if held:
        raise ParamsError(f"data.root must be a dataset folder, not one holding the pipeline's "
                          f"outputs {held}: {root!r}")


@functools.lru_cache(maxsize=1)
def _pipeline_outputs() -> tuple[str, ...]:
    """The ``outs`` (and metrics, plots) of dvc.yaml's stages other than dataset stages."""
    try:
        stages = yaml.safe_load((PROJECT_ROOT / layout.DVC_FILE).read_text())["stages"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):  # an installed package: no dvc.yaml
        return ()
    return tuple(
        next(iter(out)) if isinstance(out, dict) else str(out)
        for name, stage in stages.items() if name not in _DATASET_STAGES
        for kind in ("outs", "metrics", "plots") for out in stage.get(kind) or ()
    )


#: Beam runners ``convert.runner`` may name; any other runner by its class path.
BEAM_RUNNERS = ("DirectRunner", "DataflowRunner", "FlinkRunner", "SparkRunner", "PortableRunner",
                "PrismRunner", "dask")
_CLASS_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")


@record
class ConvertParams:
    """The Beam conversion to TFRecords (stage ``convert``)."""

    num_shards: StrictInt = Field(0, ge=0, le=10_000)
    runner: StrictStr = "DirectRunner"
    direct_num_workers: StrictInt = Field(0, ge=0, le=1024)
    dask_address: StrictStr = ""
    pipeline_args: Names = ()

    @field_validator("runner")
    @classmethod
    def _known_runner(cls, runner: str) -> str:
        if runner not in BEAM_RUNNERS and not _CLASS_PATH.fullmatch(runner):
            raise ParamsError(f"convert.runner must be one of {list(BEAM_RUNNERS)} or a runner "
                              f"class path 'module.Class', got {runner!r}")
        return runner


@record
class ModelParams:
    """Which detector template to train, its input size, checkpoint and post-processing."""

    name: StrictStr = "ssd_mobilenet_v2_fpnlite_cpu"
    image_size: StrictInt = derivable(0, ge=0, le=2048)
    anchor_aspect_ratios: tuple[FiniteFloat, ...] = derivable(())
    anchor_min_size: StrictInt = derivable(0, ge=0, le=2048)
    checkpoint: StrictStr = "none"
    checkpoint_sha256: OptionalSha256 = ""
    checkpoint_url: StrictStr = ""
    score_threshold: FiniteFloat = Field(1e-8, ge=0.0, le=1.0)
    nms_iou_threshold: FiniteFloat = Field(0.6, ge=0.01, le=1.0)
    max_detections: StrictInt = Field(100, ge=1, le=10_000)

    @field_validator("name")
    @classmethod
    def _known_template(cls, name: str) -> str:
        choices = available_models()
        if name not in choices:
            raise ParamsError(f"model.name must be one of {list(choices)}, got {name!r}")
        return name

    @field_validator("image_size")
    @classmethod
    def _template_or_usable_size(cls, size: int) -> int:
        if 0 < size < 32:
            raise ParamsError(f"model.image_size must be 0 (derived from the data) or in "
                              f"[32, 2048], got {size}")
        return size

    @field_validator("anchor_aspect_ratios")
    @classmethod
    def _usable_ratios(cls, ratios: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0.1 <= r <= 10.0 for r in ratios) or len(set(ratios)) != len(ratios):
            raise ParamsError(f"model.anchor_aspect_ratios must be [] (derived from the data) or "
                              f"distinct widths/heights in [0.1, 10], got {list(ratios)}")
        return ratios

    @field_validator("anchor_min_size")
    @classmethod
    def _usable_anchor(cls, size: int) -> int:
        if 0 < size < 4:
            raise ParamsError(f"model.anchor_min_size must be 0 (derived from the data) or in "
                              f"[4, 2048] pixels, got {size}")
        return size

    @field_validator("checkpoint")
    @classmethod
    def _checkpoint_given(cls, checkpoint: str) -> str:
        if not checkpoint.strip():
            raise ParamsError("model.checkpoint must be 'none', 'zoo' or a path, got ''")
        return checkpoint

    @field_validator("checkpoint_url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if url and not url.startswith(("https://", "http://")):
            raise ParamsError("model.checkpoint_url must be '' or an https:// (or http://) base "
                              f"URL, got {url!r}")
        return url

    @model_validator(mode="after")
    def _pin_needs_checkpoint(self) -> ModelParams:
        if self.checkpoint_sha256 and self.checkpoint == "none":
            raise ParamsError("model.checkpoint_sha256 is set but model.checkpoint is 'none'")
        return self


@record
class TrainParams:
    """Optimisation settings written into pipeline.config and the training loop."""

    batch_size: StrictInt = Field(8, ge=1, le=4096)
    num_steps: StrictInt = derivable(1600, derive_when=0, ge=0, le=10_000_000)
    epochs: StrictInt = Field(32, ge=1, le=100_000)
    learning_rate: FiniteFloat = Field(0.0, ge=0.0, le=10.0)
    warmup_steps: StrictInt = Field(160, ge=0, le=10_000_000)
    freeze_backbone_steps: StrictInt = Field(0, ge=-1, le=10_000_000)
    checkpoint_every_n: StrictInt = Field(400, ge=1, le=10_000_000)
    max_boxes: StrictInt = derivable(0, ge=0, le=10_000)
    augmentations: Annotated[Names, members_of((NO_AUGMENTATION, *AUGMENTATIONS))] = ()
    seed: StrictInt = Field(0, ge=0, le=2**31 - 1)
    eval_every_n: StrictInt = Field(800, ge=0, le=10_000_000)
    best_metric: Literal["map", "map_50", "map_75", "mar_100", "val_loss"] = "map"
    num_workers: StrictInt = Field(1, ge=1, le=10_000)
    tpu_name: StrictStr = ""
    time_budget_minutes: FiniteFloat = Field(0.0, ge=0.0, le=100_000.0)
    early_stopping: StrictInt = Field(0, ge=0, le=10_000)

    @field_validator("augmentations")
    @classmethod
    def _none_alone(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        if NO_AUGMENTATION in names and len(names) > 1:
            raise ParamsError("train.augmentations: 'none' cannot be combined with others")
        return names

    @model_validator(mode="after")
    def _consistent(self) -> TrainParams:
        if self.num_workers > 1 and self.tpu_name:
            raise ParamsError("train.num_workers > 1 and train.tpu_name are exclusive: "
                              "model_main_tf2 trains either on a TPU or on several workers")
        if self.num_steps == 0:  # derived by configure, which checks these with the result
            return self
        if self.freeze_backbone_steps >= self.num_steps:
            raise ParamsError(
                f"train.freeze_backbone_steps must be -1 (throughout), 0 (never) or smaller than "
                f"train.num_steps ({self.num_steps}), got {self.freeze_backbone_steps}")
        if self.warmup_steps >= self.num_steps:
            raise ParamsError(
                f"train.warmup_steps must be smaller than train.num_steps ({self.num_steps}), "
                f"got {self.warmup_steps}"
            )
        if self.early_stopping and not self.eval_every_n:
            raise ParamsError(
                f"train.early_stopping is {self.early_stopping} but train.eval_every_n is 0 "
                "(only the final checkpoint is evaluated): set eval_every_n > 0, or "
                "early_stopping: 0")
        return self


@record
class ExportParams:
    """How the SavedModel takes its input and how the export is checked (stage ``export``)."""

    input_type: Literal["image_tensor", "encoded_image_string_tensor", "tf_example"] = (
        "image_tensor"
    )
    verify_images: StrictInt = Field(4, ge=1, le=1000)
    verify_tolerance: FiniteFloat = Field(1e-3, ge=0.0, le=1.0)
    tflite: Names = ("float32", "float16")
    tflite_max_detections: StrictInt = Field(100, ge=1, le=1000)
    representative_images: StrictInt = Field(50, ge=1, le=10_000)

    @field_validator("tflite")
    @classmethod
    def _distinct_precisions(cls, precisions: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [p for p in precisions if p not in TFLITE_PRECISIONS]
        if unknown or len(set(precisions)) != len(precisions):
            raise ParamsError(f"export.tflite must be distinct values among "
                              f"{list(TFLITE_PRECISIONS)}, got {list(precisions)}")
        return precisions


@record
class ReportParams:
    """Test-set evaluation (stage ``report``)."""

    warmup_images: StrictInt = Field(2, ge=0, le=1000)
    score_threshold: FiniteFloat = Field(0.5, ge=0.0, le=1.0)
    sample_images: StrictInt = Field(6, ge=0, le=100)
    worst_images: StrictInt = Field(6, ge=0, le=100)
    registered_model: StrictStr = "object-detector"


@record
class MlflowParams:
    """Where runs are recorded. ``MLFLOW_TRACKING_URI`` overrides ``tracking_uri``."""

    experiment: StrictStr = "object-detection"
    tracking_uri: StrictStr = "sqlite:///mlflow.db"
    http_max_retries: StrictInt = Field(2, ge=0, le=20)
    http_timeout_s: StrictInt = Field(10, ge=1, le=600)

    @field_validator("experiment")
    @classmethod
    def _named(cls, experiment: str) -> str:
        if not experiment.strip():
            raise ParamsError(f"mlflow.experiment must be a non-empty name, got {experiment!r}")
        return experiment


@record
class Params:
    """All of params.yaml. Sections are built on demand (``default_factory``): importing this
    module reads no file (model.name is checked against configs/models.yaml)."""

    sample: SampleParams = Field(default_factory=SampleParams)
    data: DataParams = Field(default_factory=DataParams)
    convert: ConvertParams = Field(default_factory=ConvertParams)
    model: ModelParams = Field(default_factory=ModelParams)
    train: TrainParams = Field(default_factory=TrainParams)
    export: ExportParams = Field(default_factory=ExportParams)
    report: ReportParams = Field(default_factory=ReportParams)
    mlflow: MlflowParams = Field(default_factory=MlflowParams)

    @model_validator(mode="after")
    def _dataset_exists(self) -> Params:
        # Here, not on DataParams: every stage loads the whole file, so under `dvc repro` this
        # message comes first (from the sample stage), before DVC's own "missing dependency"
        # for convert; convert's --input builds DataParams for a root it then checks itself.
        _require_dataset_root(self.data.root)
        return self


def _require_dataset_root(root: str) -> None:
    """Refuse a local ``data.root`` that does not exist, unless it is the sample folder (the
    sample stage writes it before convert reads it)."""
    if "://" in root or Path(os.path.normpath(root)) == layout.SAMPLE_DIR:
        return
    path = Path(root).expanduser()
    if path.resolve() == (PROJECT_ROOT / layout.SAMPLE_DIR).resolve() or path.is_dir():
        return
    what = "is not a folder" if path.exists() else "does not exist"
    raise ParamsError(f"data.root {root!r} {what} (from {Path.cwd()}); set data.root to your "
                      f"dataset folder, or {str(layout.SAMPLE_DIR)!r} for the built-in sample")


def load_params(path: str | Path = layout.PARAMS_FILE) -> Params:
    """Read, type-check and validate params.yaml; raise :class:`ParamsError` on any problem."""
    return params_from_dict(read_yaml(Path(path), "params file"))


def params_from_dict(raw: Any) -> Params:
    """Build a validated :class:`Params` from a plain mapping (as parsed from YAML)."""
    return validate(Params, raw)
