"""The convert stage's paths: local folders, or remote storage (``s3://``, ``gs://``...) through
Beam's ``FileSystems``.

``pathlib`` would turn ``gs://bucket/x`` into ``gs:/bucket/x``, so a remote path is never a
``Path``: :func:`path` gives a ``Path`` for a local folder (behaviour unchanged) and a
:class:`RemotePath` for a URL, with the part of the ``pathlib`` API the readers use, every
operation going through ``FileSystems``. Writes: :func:`write_bytes` (local: the atomic writes
of :mod:`pipeline.core.files`; remote: one object upload, which readers see whole or not at
all). Output folders: :func:`staged_folder` (local: :func:`pipeline.core.files.staged_output`;
remote: the closest safe thing, described there).
"""
from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from pipeline.core import layout
from pipeline.core.errors import PipelineError
from pipeline.core.files import MARKER, PARTIAL_SUFFIX, atomic_file, staged_output

log = logging.getLogger(__name__)

#: A URL's scheme, as Beam's _fs().get_scheme reads it.
_SCHEME = re.compile(r"([a-zA-Z][-+.a-zA-Z0-9]*)://")


def is_remote(location: str | Path | RemotePath) -> bool:
    """Whether ``location`` is a URL of a storage other than the local disk."""
    scheme = _SCHEME.match(str(location))
    return scheme is not None and scheme[1] != "file"


def _fs():
    # Beam is imported on first remote use only: the VOC reader's parse workers import this
    # module, and local datasets never need Beam there.
    from apache_beam.io.filesystems import FileSystems

    return FileSystems


def _raw():
    from apache_beam.io.filesystem import CompressionTypes

    return CompressionTypes.UNCOMPRESSED  # never guess a compression from a file name


def path(location: str | Path | RemotePath) -> Path | RemotePath:
    """A ``Path`` for a local location, a :class:`RemotePath` for a URL."""
    if isinstance(location, RemotePath):
        return location
    return RemotePath(str(location)) if is_remote(location) else Path(location)


def join(folder: str | Path | RemotePath, *names: str) -> str:
    """``folder/name/...`` as a string (``os.path`` rules locally, the URL's remotely)."""
    return str(path(folder).joinpath(*names))


class RemotePath:
    """A file or "folder" (an object name prefix) in remote storage, with the ``pathlib``
    operations the dataset readers use; all I/O through Beam's ``FileSystems``."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"RemotePath({self.url!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    def __truediv__(self, name: str | PurePosixPath) -> RemotePath:
        return RemotePath(_fs().join(self.url, str(name)))

    def joinpath(self, *names: str) -> RemotePath:
        """This path with ``names`` appended."""
        joined = self
        for name in names:
            joined = joined / name
        return joined

    @property
    def name(self) -> str:
        """The last part of the path."""
        return self.url.rsplit("/", 1)[-1]

    @property
    def stem(self) -> str:
        """The name without its suffix."""
        return PurePosixPath(self.name).stem

    @property
    def suffix(self) -> str:
        """The name's extension, with its dot."""
        return PurePosixPath(self.name).suffix

    @property
    def parent(self) -> RemotePath:
        """The containing "folder"."""
        return RemotePath(_fs().split(self.url)[0])

    def with_suffix(self, suffix: str) -> RemotePath:
        """This path with another extension."""
        return self.parent / str(PurePosixPath(self.name).with_suffix(suffix))

    def resolve(self) -> RemotePath:
        """Itself: remote storage has no links and no relative paths."""
        return self

    def relative_to(self, folder: RemotePath) -> PurePosixPath:
        """The object name below ``folder`` (a pure path: string handling, no I/O)."""
        prefix = folder.url + "/"
        if not self.url.startswith(prefix):
            raise ValueError(f"{self.url} is not below {folder.url}")
        return PurePosixPath(self.url[len(prefix):])

    def is_file(self) -> bool:
        """Whether an object has exactly this name."""
        return _fs().exists(self.url)

    def is_dir(self) -> bool:
        """Whether any object lies below this prefix."""
        return next(iter(self._below()), None) is not None

    def exists(self) -> bool:
        """A file or a non-empty "folder"."""
        return self.is_file() or self.is_dir()

    def is_symlink(self) -> bool:
        """Never: remote storage has no symbolic links."""
        return False

    def iterdir(self) -> Iterator[RemotePath]:
        """The objects and "folders" directly below."""
        children = {p.relative_to(self).parts[0] for p in self._below()}
        return iter(self / child for child in sorted(children))

    def glob(self, pattern: str) -> Iterator[RemotePath]:
        """Objects directly below whose name matches ``pattern`` (``*.json``)."""
        return iter(p for p in self._below() if len(p.relative_to(self).parts) == 1
                    and fnmatch.fnmatchcase(p.name, pattern))

    def rglob(self, pattern: str) -> Iterator[RemotePath]:
        """Objects anywhere below whose name matches ``pattern`` (``*.xml``)."""
        return iter(p for p in self._below() if fnmatch.fnmatchcase(p.name, pattern))

    def read_bytes(self) -> bytes:
        """The object's content."""
        with _fs().open(self.url, compression_type=_raw()) as handle:
            return handle.read()

    def read_text(self, encoding: str = "utf-8") -> str:
        """The object's content as text."""
        return self.read_bytes().decode(encoding)

    def _below(self) -> list[RemotePath]:
        # One listing of the prefix ('*' matches '/' too): every object below, sorted.
        found = _fs().match([self.url + "/*"])[0].metadata_list
        return sorted((RemotePath(m.path) for m in found), key=str)


def write_bytes(location: str | Path, data: bytes) -> None:
    """Write ``data`` to a local file atomically, or upload it as one object."""
    if not is_remote(location):
        with atomic_file(location) as temporary:
            temporary.write_bytes(data)
        return
    with _fs().create(str(location), compression_type=_raw()) as out:
        out.write(data)


def write_text(location: str | Path, text: str) -> None:
    """:func:`write_bytes` of ``text`` in UTF-8."""
    write_bytes(location, text.encode("utf-8"))


def delete_folder(location: str | Path) -> None:
    """Remove a folder (local) or every object below a prefix (remote)."""
    found = path(location)
    if found.is_dir():
        _fs().delete([str(found) + ("/" if is_remote(location) else "")])


@contextmanager
def staged_folder(target: str | Path, inputs: Iterable[str | Path] = ()) -> Iterator[str]:
    """Yield the staging folder of output folder ``target``; publish it when the block succeeds.

    Local: :func:`pipeline.core.files.staged_output` (marker, refusals, one atomic rename).
    Remote storage has no rename of folders, so: the same refusals (a non-empty ``target``
    without the marker, or one holding an input), staging in ``<target>.partial/``, then the
    old ``target`` objects are deleted and the staged ones copied over, the marker first and
    the data report last (:data:`PUBLISH_LAST`), and the staging
    removed. A publish interrupted half-way leaves a marked ``target`` without its report: not
    done, and replaced by the next run.
    """
    if not is_remote(target):
        with staged_output(Path(target), inputs) as staging:
            yield str(staging)
        return
    target = str(target).rstrip("/")
    staging = target + PARTIAL_SUFFIX
    for folder in (target, staging):
        _check_remote_replaceable(folder, inputs)
    delete_folder(staging)
    write_text(join(staging, MARKER), "written by od-pipeline; safe to replace\n")
    try:
        yield staging
        _check_remote_replaceable(target, inputs)
        delete_folder(target)
        _publish(RemotePath(staging), RemotePath(target))
    finally:
        delete_folder(staging)


#: Copied last when a remote output is published: a folder holding it is complete.
PUBLISH_LAST = (layout.DATA_REPORT_JSON,)


def _publish(staging: RemotePath, target: RemotePath) -> None:
    names = [p.relative_to(staging).as_posix() for p in staging.rglob("*")]
    names.sort(key=lambda n: (n != MARKER, n in PUBLISH_LAST, n))
    _fs().copy([join(staging, n) for n in names], [join(target, n) for n in names])
    log.info("published %d files to %s", len(names), target)


def _check_remote_replaceable(folder: str, inputs: Iterable[str | Path]) -> None:
    for source in map(str, inputs):
        if (source.rstrip("/") + "/").startswith(folder + "/"):
            raise PipelineError(f"output {folder} would replace the input {source}: "
                                "choose another --output folder")
    remote = RemotePath(folder)
    if remote.is_dir() and not (remote / MARKER).is_file():
        raise PipelineError(f"output folder {folder} is not empty and was not written by this "
                            f"project (no {MARKER}): refusing to replace it; choose another "
                            "--output or empty it yourself")
