"""Typed, validated parameters read from ``params.yaml``.

Every stage loads the whole file through :func:`load_params`, so a bad key anywhere stops
the run before any work is done. Each section is a frozen dataclass; the rules for a field
(range, choices) live in its ``metadata`` so that the error message can name the key and the
values it allows. Unknown keys are errors, never ignored.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.core import layout
from pipeline.core.errors import ParamsError
from pipeline.core.layout import PROJECT_ROOT
from pipeline.core.schema import build_dataclass, read_yaml


def _rng(low: float | None = None, high: float | None = None, **extra: Any) -> dict:
    return {"min": low, "max": high, **extra}


def available_models() -> tuple[str, ...]:
    """Names of the templates users can pick: ``configs/<name>.config`` listed in models.yaml."""
    from pipeline.odapi import templates as zoo

    return zoo.model_names()


@dataclass(frozen=True)
class SampleParams:
    """The built-in synthetic dataset (stage ``sample``)."""

    num_images: int = field(default=500, metadata=_rng(10, 100_000))
    image_size: int = field(default=256, metadata=_rng(64, 2048))
    classes: tuple[str, ...] = ("circle", "square", "triangle")
    max_objects: int = field(default=6, metadata=_rng(1, 100))
    val_fraction: float = field(default=0.08, metadata=_rng(0.0, 0.5))
    test_fraction: float = field(default=0.12, metadata=_rng(0.0, 0.5))
    seed: int = field(default=0, metadata=_rng(0))

    def check(self) -> None:
        if len(self.classes) < 1 or len(set(self.classes)) != len(self.classes):
            raise ParamsError(
                f"sample.classes must be a non-empty list of distinct names, got {list(self.classes)}"
            )
        unknown = set(self.classes) - set(SHAPES)
        if unknown:
            raise ParamsError(
                f"sample.classes has unknown shape(s) {sorted(unknown)}; allowed: {list(SHAPES)}"
            )


#: Shapes the sample generator can draw (``sample.classes`` picks among them).
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")


@dataclass(frozen=True)
class DataParams:
    """Where the dataset to convert lives, in which format, and the conversion policies."""

    format: Literal["voc", "coco", "yolo"] = "voc"
    root: str = str(layout.SAMPLE_DIR)
    coco_annotation_file: str = "_annotations.coco.json"
    classes: tuple[str, ...] = ()
    unknown_classes: Literal["skip", "error"] = "skip"
    size_mismatch: Literal["skip", "rescale"] = "skip"
    val_fraction: float = field(default=0.1, metadata=_rng(0.0, 0.5))
    test_fraction: float = field(default=0.1, metadata=_rng(0.0, 0.5))

    def check(self) -> None:
        if not self.root.strip():
            raise ParamsError("data.root must be a non-empty path")
        _check_dataset_root(self.root)


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


@dataclass(frozen=True)
class ConvertParams:
    """The Beam conversion to TFRecords (stage ``convert``)."""

    num_shards: int = field(default=0, metadata=_rng(0, 10_000))
    runner: str = "DirectRunner"
    direct_num_workers: int = field(default=0, metadata=_rng(0, 1024))
    pipeline_args: tuple[str, ...] = ()

    def check(self) -> None:
        if self.runner not in BEAM_RUNNERS and not _CLASS_PATH.fullmatch(self.runner):
            raise ParamsError(f"convert.runner must be one of {list(BEAM_RUNNERS)} or a runner "
                              f"class path 'module.Class', got {self.runner!r}")


#: Beam runners ``convert.runner`` may name; any other runner by its class path.
BEAM_RUNNERS = ("DirectRunner", "DataflowRunner", "FlinkRunner", "SparkRunner", "PortableRunner",
                "PrismRunner")
_CLASS_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")


#: Augmentations ``train.augmentations`` can name: OD API preprocessing steps whose defaults
#: suit any detector (``random_scale_crop_and_pad_to_square`` gets the model's input size).
AUGMENTATIONS = (
    "random_horizontal_flip", "random_vertical_flip", "random_rotation90",
    "random_adjust_brightness", "random_adjust_contrast", "random_adjust_hue",
    "random_adjust_saturation", "random_distort_color", "random_rgb_to_gray",
    "random_jpeg_quality", "random_black_patches", "random_image_scale",
    "random_crop_image", "ssd_random_crop", "random_scale_crop_and_pad_to_square",
)


@dataclass(frozen=True)
class ModelParams:
    """Which detector template to train, its input size, checkpoint and post-processing."""

    name: str = "ssd_mobilenet_v2_fpnlite_cpu"
    image_size: int = field(default=0, metadata=_rng(0, 2048))
    checkpoint: str = "none"
    checkpoint_sha256: str = ""
    checkpoint_url: str = ""
    score_threshold: float = field(default=1e-8, metadata=_rng(0.0, 1.0))
    nms_iou_threshold: float = field(default=0.6, metadata=_rng(0.01, 1.0))
    max_detections: int = field(default=100, metadata=_rng(1, 10_000))

    def check(self) -> None:
        choices = available_models()
        if self.name not in choices:
            raise ParamsError(f"model.name must be one of {list(choices)}, got {self.name!r}")
        if 0 < self.image_size < 32:
            raise ParamsError(f"model.image_size must be 0 (the template's) or in [32, 2048], "
                              f"got {self.image_size}")
        if not self.checkpoint.strip():
            raise ParamsError("model.checkpoint must be 'none', 'zoo' or a path, got ''")
        if self.checkpoint_sha256 and not _is_sha256(self.checkpoint_sha256):
            raise ParamsError("model.checkpoint_sha256 must be '' or 64 lowercase hex digits, "
                              f"got {self.checkpoint_sha256!r}")
        if self.checkpoint_sha256 and self.checkpoint == "none":
            raise ParamsError("model.checkpoint_sha256 is set but model.checkpoint is 'none'")
        if self.checkpoint_url and not self.checkpoint_url.startswith(("https://", "http://")):
            raise ParamsError("model.checkpoint_url must be '' or an https:// (or http://) base "
                              f"URL, got {self.checkpoint_url!r}")


def _is_sha256(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


@dataclass(frozen=True)
class TrainParams:
    """Optimisation settings written into pipeline.config and the training loop."""

    batch_size: int = field(default=16, metadata=_rng(1, 4096))
    num_steps: int = field(default=800, metadata=_rng(1, 10_000_000))
    learning_rate: float = field(default=0.0, metadata=_rng(0.0, 10.0))
    warmup_steps: int = field(default=80, metadata=_rng(0, 10_000_000))
    freeze_backbone_steps: int = field(default=0, metadata=_rng(-1, 10_000_000))
    checkpoint_every_n: int = field(default=200, metadata=_rng(1, 10_000_000))
    max_boxes: int = field(default=50, metadata=_rng(1, 10_000))
    augmentations: tuple[str, ...] = ()
    seed: int = field(default=0, metadata=_rng(0, 2**31 - 1))
    eval_every_n: int = field(default=400, metadata=_rng(0, 10_000_000))
    best_metric: Literal["map", "map_50", "map_75", "mar_100", "val_loss"] = "map"
    num_workers: int = field(default=1, metadata=_rng(1, 10_000))
    tpu_name: str = ""

    def check(self) -> None:
        if self.num_workers > 1 and self.tpu_name:
            raise ParamsError("train.num_workers > 1 and train.tpu_name are exclusive: "
                              "model_main_tf2 trains either on a TPU or on several workers")
        if self.warmup_steps >= self.num_steps:
            raise ParamsError(
                f"train.warmup_steps must be smaller than train.num_steps ({self.num_steps}), "
                f"got {self.warmup_steps}"
            )
        unknown = sorted(set(self.augmentations) - set(AUGMENTATIONS) - {"none"})
        if unknown:
            raise ParamsError(f"train.augmentations has unknown name(s) {unknown}; "
                              f"allowed: {['none', *AUGMENTATIONS]}")
        if "none" in self.augmentations and len(self.augmentations) > 1:
            raise ParamsError("train.augmentations: 'none' cannot be combined with others")


#: TFLite precisions the export stage can write (``export.tflite``).
TFLITE_PRECISIONS = ("float32", "float16", "int8")


@dataclass(frozen=True)
class ExportParams:
    """How the SavedModel takes its input and how the export is checked (stage ``export``)."""

    input_type: Literal["image_tensor", "encoded_image_string_tensor", "tf_example"] = (
        "image_tensor"
    )
    verify_images: int = field(default=4, metadata=_rng(1, 1000))
    verify_tolerance: float = field(default=1e-3, metadata=_rng(0.0, 1.0))
    tflite: tuple[str, ...] = ("float32", "float16")
    tflite_max_detections: int = field(default=100, metadata=_rng(1, 1000))
    representative_images: int = field(default=50, metadata=_rng(1, 10_000))

    def check(self) -> None:
        unknown = [p for p in self.tflite if p not in TFLITE_PRECISIONS]
        if unknown or len(set(self.tflite)) != len(self.tflite):
            raise ParamsError(f"export.tflite must be distinct values among "
                              f"{list(TFLITE_PRECISIONS)}, got {list(self.tflite)}")


@dataclass(frozen=True)
class ReportParams:
    """Test-set evaluation (stage ``report``)."""

    warmup_images: int = field(default=2, metadata=_rng(0, 1000))
    score_threshold: float = field(default=0.5, metadata=_rng(0.0, 1.0))
    sample_images: int = field(default=6, metadata=_rng(0, 100))
    worst_images: int = field(default=6, metadata=_rng(0, 100))
    registered_model: str = "object-detector"


@dataclass(frozen=True)
class MlflowParams:
    """Where runs are recorded. ``MLFLOW_TRACKING_URI`` overrides ``tracking_uri``."""

    experiment: str = "object-detection"
    tracking_uri: str = "sqlite:///mlflow.db"
    http_max_retries: int = field(default=2, metadata=_rng(0, 20))
    http_timeout_s: int = field(default=10, metadata=_rng(1, 600))

    def check(self) -> None:
        if not self.experiment.strip():
            raise ParamsError(
                f"mlflow.experiment must be a non-empty name, got {self.experiment!r}")


@dataclass(frozen=True)
class Params:
    """All of params.yaml."""

    sample: SampleParams = SampleParams()
    data: DataParams = DataParams()
    convert: ConvertParams = ConvertParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    export: ExportParams = ExportParams()
    report: ReportParams = ReportParams()
    mlflow: MlflowParams = MlflowParams()


def load_params(path: str | Path = layout.PARAMS_FILE) -> Params:
    """Read, type-check and validate params.yaml; raise :class:`ParamsError` on any problem."""
    return params_from_dict(read_yaml(Path(path), "params file"))


def params_from_dict(raw: Any) -> Params:
    """Build a validated :class:`Params` from a plain mapping (as parsed from YAML)."""
    return build_dataclass(Params, raw, prefix="")


