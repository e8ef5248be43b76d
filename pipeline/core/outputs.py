"""Publishing output folders safely: staged in ``<output>.partial``, renamed when complete.

Every stage that writes a folder (sample, convert, export) goes through :func:`staged_output`.
A folder is only ever deleted or replaced when this project wrote it (it holds the marker file
:data:`MARKER`, written into every output folder) or when it is empty; a folder that equals or
contains one of the stage's inputs is never touched. Anything else is refused with a clear
message before any work, so ``--output`` pointing at a dataset, a training folder or a home
directory cannot destroy it.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.core.errors import PipelineError

#: Written into every output folder this project creates; only such folders are replaced.
MARKER = ".od-pipeline-output"
PARTIAL_SUFFIX = ".partial"


@contextmanager
def staged_output(target: str | Path, inputs: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Yield an empty, marked staging folder; publish it as ``target`` when the block succeeds.

    ``inputs`` are the paths the stage reads: ``target`` (and its staging folder) may not equal
    or contain any of them. On any failure the staging folder is removed and ``target`` is left
    as it was. PipelineError (before any work) when ``target`` may not be replaced.
    """
    target = Path(target)
    staging = target.with_name(target.name + PARTIAL_SUFFIX)
    inputs = [Path(p) for p in inputs]
    for path in (target, staging):
        check_replaceable(path, inputs)
    _remove(staging)
    staging.mkdir(parents=True)
    (staging / MARKER).write_text("written by od-pipeline; safe to replace\n", encoding="utf-8")
    try:
        yield staging
        check_replaceable(target, inputs)  # again: the folder may have changed meanwhile
        _remove(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # never leave a half-written output behind
        raise


def check_replaceable(path: Path, inputs: Iterable[Path] = ()) -> None:
    """PipelineError unless ``path`` is absent, an empty folder or a folder this project wrote,
    and equals or contains none of ``inputs``."""
    path = Path(path)
    for source in inputs:
        if is_within(source, path):
            raise PipelineError(f"output {path} would replace the input {source}: "
                                "choose another --output folder")
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise PipelineError(f"output {path} is a file or a symbolic link, not a folder: "
                            "refusing to replace it (choose another --output)")
    if path.is_dir() and not (path / MARKER).is_file() and any(path.iterdir()):
        raise PipelineError(f"output folder {path} is not empty and was not written by this "
                            f"project (no {MARKER}): refusing to replace it; choose another "
                            "--output or empty it yourself")


def is_within(path: str | Path, folder: str | Path) -> bool:
    """Whether ``path`` equals ``folder`` or lies inside it (symlinks resolved)."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
