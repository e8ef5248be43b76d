"""The checkpoint to fine-tune from, as a DVC-tracked folder of the project (``models/pretrained``).

``model.checkpoint: zoo`` (or a path) is resolved by :mod:`pipeline.odapi.checkpoints` (download
into the shared cache ``$OD_PIPELINE_CACHE``, pinned in configs/checkpoints.lock, verified,
safely extracted); its checkpoint is then copied into the folder, so that ``dvc push`` /
``dvc pull`` give teammates and CI the same bytes without the internet and ``dvc.lock`` shows
the hash of the checkpoint a model was trained from. Layout (names in pipeline.core.layout)::

    checkpoint/ckpt-0.index, checkpoint/ckpt-0.data-*   the weights
    pipeline.config                                     the checkpoint's own config, if any
    source.json                                         where it came from (and its sha256)

With ``model.checkpoint: none`` the folder holds only ``none.json``: the stage always has an
output, so the DAG of dvc.yaml does not depend on the params.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from pipeline.core import files, layout
from pipeline.core.errors import PipelineError
from pipeline.core.params import ModelParams
from pipeline.odapi import checkpoints
from pipeline.odapi import templates as zoo

log = logging.getLogger(__name__)

PREFIX = Path(layout.PRETRAINED_CHECKPOINT)


def write(model: ModelParams, architecture: checkpoints.Architecture, output: Path) -> None:
    """Write the pretrained folder for ``model`` (replaced as a whole, never half-written);
    ``architecture`` is the template's, checked against the checkpoint's own config."""
    with files.staged_output(output) as staging:
        if model.checkpoint == "none":
            files.write_json_atomic(staging / layout.PRETRAINED_NONE, source_of(model))
            log.info("model.checkpoint is none: training from scratch")
        else:
            copy_checkpoint(model, architecture, staging)


def copy_checkpoint(model: ModelParams, architecture: checkpoints.Architecture,
                    folder: Path) -> None:
    """Resolve ``model.checkpoint`` (download, verify) and copy its checkpoint into ``folder``."""
    prefix = Path(checkpoints.resolve(model, zoo.spec_for(model.name), architecture))
    (folder / PREFIX.parent).mkdir(parents=True)
    for part in prefix.parent.glob(f"{prefix.name}.*"):
        if part.suffix == ".index" or part.name.startswith(f"{prefix.name}.data-"):
            renamed = part.name.replace(prefix.name, PREFIX.name, 1)  # ckpt-N.* -> ckpt-0.*
            shutil.copy2(part, folder / PREFIX.parent / renamed)
    config = prefix.parent.parent / layout.PRETRAINED_CONFIG
    if prefix.parent.name == PREFIX.parent.name and config.is_file():  # the zoo's layout
        shutil.copy2(config, folder / layout.PRETRAINED_CONFIG)
    files.write_json_atomic(folder / layout.PRETRAINED_SOURCE, source_of(model, prefix))
    log.info("fine-tuning from %s (copied into the DVC-tracked folder)", prefix)


def source_of(model: ModelParams, prefix: Path | None = None) -> dict:
    """Where the checkpoint came from: the zoo archive and its pinned sha256, or the path."""
    if model.checkpoint != "zoo":
        return {"checkpoint": model.checkpoint}
    spec = zoo.spec_for(model.name)
    entry = checkpoints.read_lock().get(spec.zoo_archive)
    return {"checkpoint": "zoo", "archive": spec.zoo_archive,
            "sha256": model.checkpoint_sha256 or spec.sha256 or (entry.sha256 if entry else ""),
            "url": checkpoints.zoo_url(spec.zoo_archive, model.checkpoint_url)}


def fine_tune_prefix(model: ModelParams, architecture: checkpoints.Architecture,
                     folder: Path | None) -> str | None:
    """The checkpoint prefix to fine-tune from (None: from scratch).

    From the pretrained folder when there is one (what ``dvc pull`` gives), after checking
    that it was written for ``model.checkpoint`` and holds ``architecture``; without the folder
    (configure run by hand), ``model.checkpoint`` is resolved here as before the stage existed.
    """
    if folder is None or not folder.is_dir():
        return checkpoints.resolve(model, zoo.spec_for(model.name), architecture)
    held = _written_for(folder)
    if held != model.checkpoint:
        raise PipelineError(
            f"{folder} holds the checkpoint for model.checkpoint {held!r}, params say "
            f"{model.checkpoint!r}: run the pretrained stage (dvc repro pretrained)")
    if held == "none":
        return None
    prefix = folder / PREFIX
    if not Path(f"{prefix}.index").is_file():
        raise PipelineError(f"{folder} has no {PREFIX}.index: run the pretrained stage "
                            "(dvc repro pretrained) or dvc pull")
    own_config = folder / layout.PRETRAINED_CONFIG
    if own_config.is_file():
        checkpoints.check_architecture(own_config.read_text(), architecture, own_config)
    return str(prefix)  # as given (models/pretrained/...): the same config on every machine


def _written_for(folder: Path) -> str:
    """The ``model.checkpoint`` a pretrained folder was written for."""
    for name in (layout.PRETRAINED_NONE, layout.PRETRAINED_SOURCE):
        if (folder / name).is_file():
            try:
                return str(json.loads((folder / name).read_text())["checkpoint"])
            except (ValueError, KeyError, TypeError) as err:
                raise PipelineError(f"{folder / name} is damaged ({err}): run the pretrained "
                                    "stage again (dvc repro pretrained)") from err
    raise PipelineError(f"{folder} holds neither {layout.PRETRAINED_NONE} nor "
                        f"{layout.PRETRAINED_SOURCE}: run the pretrained stage (dvc repro "
                        "pretrained) or dvc pull")
