"""The stage contract: every file name and default path the stages share, in one place.

Each stage reads the folders of the stages before it and writes its own; this module names
them all. ``dvc.yaml`` quotes the same paths (``tests/core/test_layout.py`` checks that its
commands and outputs match the defaults here). A module that reads or writes one of these
files names it through this module, never as a literal.
"""
from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# --- the project ---------------------------------------------------------------------------------
PARAMS_FILE = "params.yaml"
DVC_FILE = "dvc.yaml"
DVC_LOCK = "dvc.lock"
#: model templates (``<name>.config``), their facts (``models.yaml``), the checkpoint lock
CONFIGS_DIR = PROJECT_ROOT / "configs"
MODELS_FILE = "models.yaml"
CHECKPOINTS_LOCK = "checkpoints.lock"

# --- default paths of the stages' outputs (relative to the project, as in dvc.yaml) --------------
SAMPLE_DIR = Path("data/sample")
RECORDS_DIR = Path("data/tfrecords")
PIPELINE_CONFIG = Path("models/pipeline.config")
MODEL_DIR = Path("models/train")
EXPORT_DIR = Path("models/exported")
REPORTS_DIR = Path("reports")
TRAIN_CURVES = REPORTS_DIR / "train_curves.csv"
EVAL_CURVES = REPORTS_DIR / "eval_curves.csv"
EVAL_METRICS = REPORTS_DIR / "eval_metrics.json"
PRETRAINED_DIR = Path("models/pretrained")

# --- inside the records folder (convert) ---------------------------------------------------------
LABEL_MAP = "label_map.pbtxt"
DATA_REPORT_JSON = "data_report.json"
DATA_REPORT_MD = "data_report.md"
DATA_PLOTS_DIR = "plots"


def shard_name(split: str, index: int, count: int) -> str:
    """``train.tfrecord-00000-of-00004``: shard ``index`` of ``count`` of ``split``."""
    return f"{split}.tfrecord-{index:05d}-of-{count:05d}"


def shard_pattern(split: str) -> str:
    """The glob matching every shard of ``split``."""
    return f"{split}.tfrecord-*"


def record_files(records_dir: str | Path, split: str) -> list[str]:
    """The sorted shard files of ``split`` in ``records_dir`` (empty when there are none)."""
    return sorted(str(p) for p in Path(records_dir).glob(shard_pattern(split)) if p.is_file())


# --- inside the training folder (train) ----------------------------------------------------------
FINGERPRINT_FILE = "fingerprint.json"
EVAL_HISTORY_FILE = "eval_history.json"
BEST_DIR = "best"
BEST_FILE = "best.json"
#: the OD API's folders of a non-chief training worker (in the folder and in its ``train/``)
WORKER_TEMP_GLOB = "temp_worker_*"
FINE_TUNE_RESTORE_FILE = "fine_tune_restore.json"  # what the fine-tuning restore restored
#: the OD API's training summaries (TF event files) inside the training folder
TRAIN_EVENTS_DIR = "train"
BUDGET_PLAN_FILE = "budget_plan.json"  # the steps planned for train.time_budget_minutes
#: the pipeline.config trained under a time budget: configure's (a DVC output, never changed)
#: with the planned schedule
BUDGET_CONFIG_FILE = "budget_pipeline.config"

# --- inside the pretrained folder (pretrained) ----------------------------------------------------
PRETRAINED_CHECKPOINT = "checkpoint/ckpt-0"  # the weights' prefix (.index, .data-*), as the zoo's
PRETRAINED_CONFIG = "pipeline.config"  # the checkpoint's own config, when it has one
PRETRAINED_SOURCE = "source.json"  # where the checkpoint came from (and its sha256)
PRETRAINED_NONE = "none.json"  # the whole folder when model.checkpoint is none

# --- inside the export folder (export) -----------------------------------------------------------
SAVED_MODEL_DIR = "saved_model"
VERIFICATION_FILE = "verification.json"
TFLITE_DIR = "tflite"
TFLITE_META = "tflite.json"
SAVED_MODEL_GRAPH = "saved_model.pb"  # inside SAVED_MODEL_DIR: its presence marks a SavedModel

# --- inside the reports folder (report) ----------------------------------------------------------
METRICS_FILE = "metrics.json"
GROUNDTRUTH_FILE = "groundtruth.json"
DETECTIONS_FILE = "detections.json"
PER_CLASS_CSV = "per_class.csv"
PER_CLASS_MD = "per_class.md"
REPORT_HTML = "report.html"
REPORT_PLOTS_DIR = "plots"
PR_CURVE = "pr_curve"  # .csv and .png
CONFUSION_MATRIX = "confusion_matrix"  # .csv and .png
REPORT_IMAGES_DIR = "images"

# --- predict --------------------------------------------------------------------------------------
PREDICTIONS_FILE = "detections.json"
PREDICTIONS_DIR = Path("predictions")  # predict's default --output

# --- MLflow records kept beside the outputs (tracking) -------------------------------------------
RUN_FILE = "mlflow_run.json"
JOURNAL_FILE = "mlflow_journal.jsonl"
SENT_FILE = "mlflow_journal.sent"
#: pending journals of the stages other than train (one folder per execution)
JOURNALS_DIR = Path("mlflow_journal")
