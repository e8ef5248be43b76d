"""The training folder: resume or start fresh (fingerprint), the best checkpoint, the
evaluation history."""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from pipeline.core import files, layout
from pipeline.odapi import training_hooks
from pipeline.training.inputs import TrainingRun, train_record_files

log = logging.getLogger(__name__)


def fingerprint(config: Path, train: TrainingRun | None = None) -> dict[str, str]:
    """Hashes of what the checkpoints depend on: model graph, classes, train config, train data,
    and the train params that shape the run (seed, evaluation steps, best metric, freezing,
    time budget). The fingerprint is of configure's config, not of the schedule a time budget
    plans: the plan is stored beside it and kept on resume."""
    from object_detection.utils import config_util

    configs = config_util.get_configs_from_pipeline_file(str(config))
    reader = configs["train_input_config"]
    label_map = Path(reader.label_map_path)
    train_files = train_record_files(config, reader)
    parts = {
        "model": str(configs["model"]),
        "label_map": label_map.read_text() if label_map.is_file() else "",
        "train_config": str(configs["train_config"]),
        "train_data": "\n".join(f"{p.name} {p.stat().st_size}" for p in train_files),
    }
    if train is not None:
        parts["train_params"] = (f"seed={train.seed} eval_every_n={train.eval_every_n} "
                                 f"best_metric={train.best_metric}")
        if train.freeze_backbone_steps:  # only when set: other runs keep their fingerprint
            parts["train_params"] += f" freeze_backbone_steps={train.freeze_backbone_steps}"
        if train.time_budget_minutes:  # another budget plans another schedule
            parts["train_params"] += f" time_budget_minutes={train.time_budget_minutes:g}"
    return {name: hashlib.sha256(text.encode()).hexdigest()[:16] for name, text in parts.items()}


def prepare_model_dir(model_dir: Path, current: dict[str, str]) -> int:
    """Keep ``model_dir`` to resume from when its checkpoints match ``current``; else empty it
    (only a training folder or an empty one: PipelineError for a folder of other files).
    Returns the step training starts from: the latest checkpoint's, 0 for a fresh start."""
    path = model_dir / layout.FINGERPRINT_FILE
    stored = json.loads(path.read_text()) if path.is_file() else None
    has_checkpoints = (model_dir / "checkpoint").is_file()
    if has_checkpoints and stored != current:
        changed = sorted(k for k in current if (stored or {}).get(k) != current[k])
        log.warning("%s holds checkpoints of another configuration (changed: %s): starting a "
                    "fresh training directory instead of restoring them", model_dir,
                    ", ".join(changed))
    if stored != current:
        if stored is None and not has_checkpoints:
            files.check_replaceable(model_dir)  # not a training folder: never emptied
        shutil.rmtree(model_dir, ignore_errors=True)
    model_dir.mkdir(parents=True, exist_ok=True)
    files.write_text_atomic(path, json.dumps(current, indent=1) + "\n")  # crash-safe
    if stored != current or not has_checkpoints:
        return 0
    step = training_hooks.checkpoint_step(model_dir)
    log.info("resuming from %s (step %d)", model_dir, step)
    return step


def latest_checkpoint(model_dir: Path) -> str | None:
    """The newest checkpoint prefix in ``model_dir`` (None when there is none)."""
    import tensorflow as tf

    return tf.train.latest_checkpoint(str(model_dir))


def copy_best(checkpoint: str, step: int, model_dir: Path,
              before_publish: Callable[[Path], None] | None = None) -> None:
    """Copy ``checkpoint`` to ``<model_dir>/best/`` (with its own ``checkpoint`` state file);
    ``before_publish(folder)`` may add files to the staged copy before it replaces the old one."""
    staging = model_dir / f"{layout.BEST_DIR}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    prefix = Path(checkpoint)
    for path in prefix.parent.glob(prefix.name + ".*"):
        shutil.copy2(path, staging / path.name)
    (staging / "checkpoint").write_text(
        f'model_checkpoint_path: "{prefix.name}"\nall_model_checkpoint_paths: "{prefix.name}"\n')
    best = {"step": step, "checkpoint": prefix.name}
    (staging / layout.BEST_FILE).write_text(json.dumps(best) + "\n")
    if before_publish is not None:
        before_publish(staging)
    shutil.rmtree(model_dir / layout.BEST_DIR, ignore_errors=True)
    staging.rename(model_dir / layout.BEST_DIR)
    log.info("best checkpoint so far: step %d -> %s", step, model_dir / layout.BEST_DIR)


def read_best(model_dir: Path) -> dict | None:
    path = model_dir / layout.BEST_DIR / layout.BEST_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def load_history(model_dir: Path) -> dict[str, dict[str, float]]:
    path = model_dir / layout.EVAL_HISTORY_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def save_history(model_dir: Path, history: dict[str, dict[str, float]]) -> None:
    files.write_json_atomic(model_dir / layout.EVAL_HISTORY_FILE, history, indent=1)
