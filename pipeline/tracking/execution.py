"""Which pipeline execution a stage belongs to: one ``dvc repro`` (or ``dvc exp run``) is one
MLflow run, named after model and dataset, with its stages nested under it.

DVC starts each stage as a process of its own (``dvc`` -> shell -> ``python -m pipeline ...``)
and tells it nothing about the execution, so the key of an execution is the nearest ``dvc``
process above the stage: ``<host>:<pid>:<start time>`` (the start time makes a reused pid a new
key; the host, machines sharing a tracking server). ``dvc repro`` and ``dvc exp run`` run every
stage under one such process; a queued sweep (``dvc queue start``) runs each experiment in a
``dvc exp exec-run`` process of its own, so each experiment is an execution of its own. A stage
run by hand has no ``dvc`` above it: it records a top-level run of its own, as before.

The key is written into the journal records (:meth:`RunJournal.nest_in_execution`,
:meth:`RunJournal.join_execution`), not into a file: the run of an execution is found in the
tracking store by its tag ``pipeline.execution`` when a journal is sent, or created then, so a
journal kept while the server was down rebuilds the same nesting when ``sync-mlflow`` sends it.
"""
from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from pipeline.core.params import Params
from pipeline.tracking import journal as tracking
from pipeline.tracking.provenance import run_name

#: how the ``dvc`` command shows in a process's name or first two command-line words
DVC_NAMES = frozenset({"dvc", "dvc.exe"})


def execution_key(process: Any = None) -> str | None:
    """``<host>:<pid>:<start time>`` of the nearest ``dvc`` process above ``process`` (this
    process by default), or None when no ``dvc`` process started it."""
    import psutil

    try:
        process = process or psutil.Process()
        for ancestor in process.parents():
            if _is_dvc(ancestor):
                return f"{socket.gethostname()}:{ancestor.pid}:{ancestor.create_time():.2f}"
    except psutil.Error:  # an ancestor gone meanwhile: its stages cannot be told apart
        return None
    return None


def _is_dvc(process: Any) -> bool:
    """Whether ``process`` is the ``dvc`` command: its name, its script (``python .../dvc``)
    or ``python -m dvc``."""
    import psutil

    try:
        command = process.cmdline()
        name = process.name()
    except psutil.Error:  # another user's process, or gone: not ours
        return False
    words = {name, *(Path(word).name for word in command[:2])}
    return bool(words & DVC_NAMES) or command[1:3] == ["-m", "dvc"]


def stage_journal(params: Params, stage: str) -> tracking.RunJournal:
    """A fresh journal for one execution of ``stage`` (``sample``, ``convert``, ``configure``),
    nested under the run of the pipeline execution it belongs to (top-level outside DVC)."""
    journal = tracking.stage_journal(params.mlflow, stage)
    key = execution_key()
    if key:
        journal.nest_in_execution(key, run_name(params))
    return journal


def join_execution(journal: tracking.RunJournal, params: Params) -> None:
    """Make a new training run the run of the pipeline execution it belongs to (nothing
    outside DVC: the training gets a top-level run of its own)."""
    key = execution_key()
    if key:
        journal.join_execution(key, run_name(params))
