"""State files that survive a crash at any byte.

A file rewritten in place (``write_text``) is empty or half-written if the process dies
mid-write; :func:`write_text_atomic` writes a sibling file and renames it over the target, so
readers see the old content or the new one. An append-only JSON Lines file can end in a torn
line after a crash: :func:`read_jsonl` skips unreadable lines (with a warning giving their
count) instead of failing, and :func:`append_jsonl` cuts a torn tail off before appending so
that the next record starts on a line of its own.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Iterable

log = logging.getLogger(__name__)


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one rename (never a half-written file)."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    partial.replace(path)


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
