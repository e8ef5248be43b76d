"""Checkpoints to fine-tune from: ``model.checkpoint`` is ``none``, ``zoo`` or a local path.

``zoo`` downloads the TF2 model zoo archive of the template (``zoo_archive`` in
configs/models.yaml) into a cache shared by every run and project on the machine, checks its
sha256 against the pinned value before anything is extracted, and extracts it safely: regular
files and folders only (no links, devices or fifos), no member outside the target folder. A
refused archive leaves nothing behind: the download is deleted and the extraction happens in a
temporary folder that is renamed only when complete.

Cache: ``$OD_PIPELINE_CACHE`` or ``~/.cache/od-pipeline``, with ``archives/<name>.tar.gz``
and ``checkpoints/<name>/`` (extracted). ``$OD_PIPELINE_ZOO_URL`` replaces the zoo's base URL
(a mirror, or a local server in the tests).
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath

from pipeline.errors import PipelineError
from pipeline.params import ModelParams
from pipeline.zoo import ModelSpec

log = logging.getLogger(__name__)

ZOO_BASE_URL = "http://download.tensorflow.org/models/object_detection/tf2/20200711"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
DOWNLOAD_TIMEOUT_SECONDS = 60
CHUNK_BYTES = 1 << 20
COMPLETE_MARKER = ".complete"  # holds the sha256 of the archive a folder was extracted from


def cache_dir() -> Path:
    """Where archives and extracted checkpoints are kept between runs."""
    configured = os.environ.get("OD_PIPELINE_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "od-pipeline"


def zoo_url(archive: str) -> str:
    """The download URL of a zoo archive (``$OD_PIPELINE_ZOO_URL`` replaces the base)."""
    base = os.environ.get("OD_PIPELINE_ZOO_URL") or ZOO_BASE_URL
    return f"{base.rstrip('/')}/{archive}.tar.gz"


def resolve(model: ModelParams, spec: ModelSpec) -> str | None:
    """The checkpoint prefix to fine-tune from (``.../ckpt-0``), or None to train from scratch."""
    if model.checkpoint == "none":
        return None
    if model.checkpoint == "zoo":
        return zoo_checkpoint(model.name, spec, model.checkpoint_sha256 or spec.sha256)
    return local_checkpoint(Path(model.checkpoint), spec, model.checkpoint_sha256)


# --- model.checkpoint: zoo ---------------------------------------------------------------------


def zoo_checkpoint(model_name: str, spec: ModelSpec, expected_sha256: str) -> str:
    """Download (once), verify and extract the template's zoo archive; its checkpoint prefix."""
    if not spec.zoo_archive:
        raise PipelineError(
            f"template {model_name!r} has no model zoo checkpoint (zoo_archive is empty in "
            "configs/models.yaml); use model.checkpoint: none or a local checkpoint path")
    target = cache_dir() / "checkpoints" / spec.zoo_archive
    if expected_sha256 and _extracted_from(target) == expected_sha256:
        return find_checkpoint_prefix(target)
    archive = cache_dir() / "archives" / f"{spec.zoo_archive}.tar.gz"
    if not archive.is_file():
        download(zoo_url(spec.zoo_archive), archive)
    actual = sha256_of(archive)
    if not expected_sha256:
        raise PipelineError(
            f"no sha256 is pinned for {archive.name}, so it is not extracted. Its sha256 is "
            f"{actual}. If you trust this file (compare it with a copy from another machine or "
            f"source), pin it: model.checkpoint_sha256: {actual} in params.yaml, or sha256 of "
            f"{model_name} in configs/models.yaml. The archive stays in {archive.parent}.")
    if actual != expected_sha256:
        archive.unlink()
        raise PipelineError(
            f"checksum mismatch for {archive.name}: expected sha256 {expected_sha256}, got "
            f"{actual}; the file was deleted (a corrupt or tampered download)")
    try:
        extract_safely(archive, target, actual)
    except PipelineError as err:
        archive.unlink()
        raise PipelineError(f"{err}; the archive was deleted from the cache") from err
    return find_checkpoint_prefix(target)


def download(url: str, path: Path) -> None:
    """Stream ``url`` to ``path`` through ``path.partial``; nothing is left on failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    log.info("downloading %s to %s", url, path)
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_SECONDS) as response:
            _copy_with_progress(response, partial, int(response.headers.get("Content-Length", 0)))
    except (urllib.error.URLError, OSError) as err:
        partial.unlink(missing_ok=True)
        raise PipelineError(
            f"cannot download {url} ({getattr(err, 'reason', err)}). Offline? Download that "
            f"file on another machine and put it at {path}, or set model.checkpoint to the "
            "path of a local archive or checkpoint prefix") from err
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, path)


def _copy_with_progress(response, target: Path, total: int) -> None:
    from tqdm import tqdm

    with target.open("wb") as out, tqdm(total=total or None, unit="B", unit_scale=True,
                                        desc=target.name, disable=None) as bar:
        while chunk := response.read(CHUNK_BYTES):
            out.write(chunk)
            bar.update(len(chunk))


def sha256_of(path: Path) -> str:
    """The sha256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


# --- model.checkpoint: a local path ----------------------------------------------------------


def local_checkpoint(path: Path, spec: ModelSpec, expected_sha256: str) -> str:
    """A checkpoint prefix, a folder holding one (an extracted zoo archive) or an archive."""
    if path.is_file() and path.name.endswith(ARCHIVE_SUFFIXES):
        return local_archive_checkpoint(path, spec, expected_sha256)
    if Path(f"{path}.index").is_file():
        return str(path.resolve())
    if path.is_dir():
        return find_checkpoint_prefix(path)
    raise PipelineError(
        f"model.checkpoint {str(path)!r} is not 'none', 'zoo', an archive "
        f"({', '.join(ARCHIVE_SUFFIXES)}), a folder with a checkpoint, nor a checkpoint prefix "
        f"({path}.index not found)")


def local_archive_checkpoint(archive: Path, spec: ModelSpec, expected_sha256: str) -> str:
    """Verify a local archive (against model.checkpoint_sha256, or the zoo pin for a zoo
    archive of the same name), extract it safely into the cache; its checkpoint prefix."""
    if not expected_sha256 and spec.zoo_archive and archive.name == f"{spec.zoo_archive}.tar.gz":
        expected_sha256 = spec.sha256
    actual = sha256_of(archive)
    if expected_sha256 and actual != expected_sha256:
        raise PipelineError(f"checksum mismatch for {archive}: expected sha256 "
                            f"{expected_sha256}, got {actual}")
    if not expected_sha256:
        log.warning("%s has no pinned sha256 (set model.checkpoint_sha256 to check it); "
                    "its sha256 is %s", archive, actual)
    target = cache_dir() / "checkpoints" / f"local-{actual[:16]}"
    if _extracted_from(target) != actual:
        extract_safely(archive, target, actual)
    return find_checkpoint_prefix(target)


# --- safe extraction ---------------------------------------------------------------------------


def extract_safely(archive: Path, target: Path, sha256: str) -> None:
    """Extract ``archive`` into ``target`` if every member is a plain file or folder inside it.

    The members are all checked before anything is written; extraction goes to a temporary
    folder next to ``target``, renamed when complete, so a refused or failed archive leaves
    nothing behind.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        with _open_tar(archive) as tar:
            members = tar.getmembers()
            for member in members:
                check_member(member, archive)
            tar.extractall(staging, members=members, filter="data")
        (staging / COMPLETE_MARKER).write_text(sha256 + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _open_tar(archive: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError) as err:
        raise PipelineError(f"{archive} is not a readable tar archive: {err}") from err


def check_member(member: tarfile.TarInfo, archive: Path) -> None:
    """Refuse links, special files, absolute names and names that climb out (``..``)."""
    if not (member.isfile() or member.isdir()):
        kind = "a symlink" if member.issym() else "a hard link" if member.islnk() else (
            "a special file")
        raise PipelineError(f"unsafe archive {archive.name}: member {member.name!r} is {kind}; "
                            "only regular files and folders are extracted")
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts or "\\" in member.name:
        raise PipelineError(f"unsafe archive {archive.name}: member {member.name!r} would be "
                            "written outside the target folder")


def _extracted_from(target: Path) -> str | None:
    marker = target / COMPLETE_MARKER
    return marker.read_text().strip() if marker.is_file() else None


def find_checkpoint_prefix(folder: Path) -> str:
    """The checkpoint prefix inside ``folder``: ``ckpt-0`` (the zoo's), else the only one."""
    indexes = sorted(folder.rglob("ckpt-0.index")) or sorted(folder.rglob("*.index"))
    if len(indexes) != 1:
        found = [str(p.relative_to(folder)) for p in indexes] or "none"
        raise PipelineError(f"expected one checkpoint (a ckpt-0.index file) in {folder}, "
                            f"found {found}")
    return str(indexes[0].with_suffix("").resolve())
