"""Every file the stages write goes through here: nothing is ever half-written or lost.

- Single files: :func:`atomic_file` / :func:`write_text_atomic` / :func:`write_json_atomic`
  write a sibling file and rename it over the target, so readers see the old content or the
  new one, never a torn file.
- Append-only JSON Lines files (the MLflow journal) can end in a torn line after a crash:
  :func:`read_jsonl` skips unreadable lines (with a warning giving their count) instead of
  failing, and :func:`append_jsonl` cuts a torn tail off before appending.
- Output folders (sample, convert, export) are staged in ``<output>.partial`` and renamed when
  complete (:func:`staged_output`). A folder is only ever deleted or replaced when this project
  wrote it (it holds the marker file :data:`MARKER`) or when it is empty; a folder that equals or
  contains one of the stage's inputs is never touched, so ``--output`` pointing at a dataset, a
  training folder or a home directory cannot destroy it.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.core.errors import PipelineError

log = logging.getLogger(__name__)

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



@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; it replaces ``path`` in one rename when
    the block succeeds and is removed when it fails, so ``path`` is never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A plain open() (not mkstemp, which makes files 0600) keeps the usual umask permissions;
    # the process id keeps two writers of the same file apart.
    temporary = path.with_name(f".{path.name}.{os.getpid()}{PARTIAL_SUFFIX}")
    try:
        yield temporary
        with temporary.open("rb+") as handle:
            os.fsync(handle.fileno())  # the bytes are on disk before the rename publishes them
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one rename (never a half-written file)."""
    with atomic_file(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | Path, data: Any, indent: int | None = 2) -> None:
    """Replace ``path`` with ``data`` as JSON (and a final newline) in one rename."""
    write_text_atomic(path, json.dumps(data, indent=indent) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    """The JSON objects of ``path``, one per line; unreadable (torn) lines skipped and counted."""
    path = Path(path)
    if not path.is_file():
        return []
    records, torn = [], 0
    for line in path.read_bytes().split(b"\n"):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:  # a crash mid-write (JSONDecodeError, UnicodeDecodeError)
            torn += 1
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            torn += 1
    if torn:
        log.warning("%s: skipped %d unreadable line(s) (torn by a crash mid-write)", path, torn)
    return records


def append_jsonl(path: Path, records: Iterable[dict]) -> None:
    """Append one JSON line per record, after cutting off a torn last line if there is one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(r) + "\n" for r in records)
    if not lines:
        return
    _cut_torn_tail(path)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(lines)
        handle.flush()
        os.fsync(handle.fileno())


def _cut_torn_tail(path: Path) -> None:
    # A torn line has no newline; appending to it would merge it with the next record.
    if not path.is_file() or path.stat().st_size == 0:
        return
    with path.open("rb") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) == b"\n":
            return
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1
    log.warning("%s: dropped a torn last line (%d bytes, a crash mid-write)", path,
                len(data) - keep)
    with path.open("r+b") as handle:
        handle.truncate(keep)
