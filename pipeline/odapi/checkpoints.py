"""Checkpoints to fine-tune from: ``model.checkpoint`` is ``none``, ``zoo`` or a local path.

``zoo`` downloads the TF2 model zoo archive of the template (``zoo_archive`` in
configs/models.yaml) into a cache shared by every run and project on the machine, checks it
before anything is extracted, and extracts it safely: regular files and folders only (no
links, devices or fifos), no member outside the target folder, a checkpoint inside, and (when
the archive carries its ``pipeline.config``) the same architecture as the template. A refused
archive leaves nothing behind: the download is deleted and the extraction happens in a
temporary folder that is renamed only when complete.

Trust on first use: the zoo publishes no checksums, so the first download of an archive is
pinned in the project's ``configs/checkpoints.lock`` (sha256, size, URL, date; commit it).
Every later download or cached copy must match it. A pin in params (``model.checkpoint_sha256``)
or in configs/models.yaml (``sha256``) wins over the lock.

Cache: ``$OD_PIPELINE_CACHE`` or ``~/.cache/od-pipeline``, with ``archives/<name>.tar.gz``
and ``checkpoints/<name>/`` (extracted). The base URL is ``model.checkpoint_url``, else
``$OD_PIPELINE_ZOO_URL``, else the zoo's (a mirror, or a local server in the tests).
"""
from __future__ import annotations

import datetime
import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import asdict
from pathlib import Path, PurePosixPath
from typing import Annotated

import yaml
from pydantic import Field, StrictInt, StrictStr

from pipeline.core import layout
from pipeline.core import files
from pipeline.core.errors import PipelineError
from pipeline.core.errors import ParamsError
from pipeline.core.layout import CONFIGS_DIR
from pipeline.core.params import ModelParams
from pipeline.core.schema import Sha256, read_yaml, record, validate
from pipeline.odapi.templates import ModelSpec

log = logging.getLogger(__name__)

ZOO_BASE_URL = "https://download.tensorflow.org/models/object_detection/tf2/20200711"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
DOWNLOAD_TIMEOUT_SECONDS = 60
CHUNK_BYTES = 1 << 20
COMPLETE_MARKER = ".complete"  # holds the sha256 of the archive a folder was extracted from
LOCK_FILE = CONFIGS_DIR / layout.CHECKPOINTS_LOCK
LOCK_HEADER = ("# sha256 of each model zoo archive, pinned on its first download (trust on first\n"
               "# use; written by pipeline/odapi/checkpoints.py). Commit this file: every later download\n"
               "# or cached copy must match. Delete an entry to pin a new file on the next run.\n")

#: (meta-architecture, feature extractor type) of a model config, e.g. ("ssd", "ssd_mobilenet_v2_keras")
Architecture = tuple[str, str]


def cache_dir() -> Path:
    """Where archives and extracted checkpoints are kept between runs."""
    configured = os.environ.get("OD_PIPELINE_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "od-pipeline"


def zoo_url(archive: str, base_url: str = "") -> str:
    """The download URL of a zoo archive: ``base_url`` (model.checkpoint_url), else
    ``$OD_PIPELINE_ZOO_URL``, else the zoo's."""
    base = base_url or os.environ.get("OD_PIPELINE_ZOO_URL") or ZOO_BASE_URL
    return f"{base.rstrip('/')}/{archive}.tar.gz"


def resolve(model: ModelParams, spec: ModelSpec, architecture: Architecture | None = None
            ) -> str | None:
    """The checkpoint prefix to fine-tune from (``.../ckpt-0``), or None to train from scratch.

    ``architecture`` (of the template) is compared with the checkpoint's ``pipeline.config``
    when it has one."""
    if model.checkpoint == "none":
        return None
    if model.checkpoint == "zoo":
        return zoo_checkpoint(model, spec, architecture)
    return local_checkpoint(Path(model.checkpoint), spec, model.checkpoint_sha256, architecture)


# --- the lock file (trust on first use) --------------------------------------------------------


@record
class LockEntry:
    """What the first download of an archive was: its sha256, byte size, URL and UTC date."""

    sha256: Sha256
    size: Annotated[StrictInt, Field(ge=1)]
    url: StrictStr
    date: StrictStr


def read_lock(path: Path | None = None) -> dict[str, LockEntry]:
    """The pinned archives of ``configs/checkpoints.lock`` ({} if it does not exist)."""
    path = path or LOCK_FILE
    if not path.is_file():
        return {}
    redo = "restore it with git or delete the entry to pin the archive again on its next download"
    try:
        raw = read_yaml(path, "checkpoint lock")
        if not isinstance(raw, dict):
            raise ParamsError("it must map archive names to their sha256, size, url and date")
        return {str(name): validate(LockEntry, _dates_as_text(entry), f"{name}.")
                for name, entry in raw.items()}
    except ParamsError as err:
        raise PipelineError(f"{path} is damaged (edited by hand?): {err}; {redo}") from err


def _dates_as_text(entry):
    if isinstance(entry, dict):  # YAML reads an unquoted 2026-01-31 as a date
        return {k: v.isoformat() if isinstance(v, (datetime.date, datetime.datetime)) else v
                for k, v in entry.items()}
    return entry


def pin_on_first_use(archive_name: str, archive: Path, sha256: str, url: str,
                     path: Path | None = None) -> None:
    """Record ``archive`` in the lock file (written atomically, other entries kept)."""
    path = path or LOCK_FILE
    entries = {name: asdict(entry) for name, entry in read_lock(path).items()}
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    entries[archive_name] = asdict(LockEntry(sha256=sha256, size=archive.stat().st_size, url=url,
                                             date=now.isoformat().replace("+00:00", "Z")))
    files.write_text_atomic(path, LOCK_HEADER + yaml.safe_dump(entries, sort_keys=True))
    log.warning("pinned on first use: %s has sha256 %s (%d bytes, from %s), recorded in %s; "
                "commit that file", archive.name, sha256, entries[archive_name]["size"], url, path)


# --- model.checkpoint: zoo ---------------------------------------------------------------------


def zoo_checkpoint(model: ModelParams, spec: ModelSpec,
                   architecture: Architecture | None = None) -> str:
    """Download (once), verify and extract the template's zoo archive; its checkpoint prefix.

    The expected sha256 is model.checkpoint_sha256, else the sha256 of configs/models.yaml,
    else the lock entry; with none of them, the archive is pinned in the lock (first use)."""
    if not spec.zoo_archive:
        raise PipelineError(
            f"template {model.name!r} has no model zoo checkpoint (zoo_archive is empty in "
            "configs/models.yaml); use model.checkpoint: none or a local checkpoint path")
    locked = read_lock().get(spec.zoo_archive)
    pin, pinned_by = _expected_sha256(model, spec, locked)
    target = cache_dir() / "checkpoints" / spec.zoo_archive
    if pin and _extracted_from(target) == pin:
        return checked_prefix(target, architecture)
    archive = cache_dir() / "archives" / f"{spec.zoo_archive}.tar.gz"
    url = zoo_url(spec.zoo_archive, model.checkpoint_url)
    if not archive.is_file():
        download(url, archive)
    actual, size = sha256_of(archive), archive.stat().st_size
    if pin and actual != pin or pinned_by == "lock" and size != locked.size:
        archive.unlink()
        first = (f" ({locked.size} bytes, first downloaded {locked.date} from {locked.url})"
                 if pinned_by == "lock" else "")
        raise PipelineError(
            f"checksum mismatch for {archive.name}: {_where(pinned_by)} expects sha256 {pin}"
            f"{first}, got {actual} ({size} bytes from {url}); "
            "the file was deleted and nothing extracted (a corrupt or tampered download, or a "
            f"changed archive: if you trust the new one, {_how_to_repin(pinned_by)})")
    try:
        extract_safely(archive, target, actual, architecture)
    except PipelineError as err:
        archive.unlink()
        raise PipelineError(f"{err}; the archive was deleted from the cache") from err
    if not locked:
        if not pin:
            pin_on_first_use(spec.zoo_archive, archive, actual, url)
        else:
            log.info("%s matches %s", archive.name, _where(pinned_by))
    return find_checkpoint_prefix(target)


def _expected_sha256(model: ModelParams, spec: ModelSpec,
                     locked: LockEntry | None) -> tuple[str, str]:
    if model.checkpoint_sha256:
        return model.checkpoint_sha256, "model.checkpoint_sha256"
    if spec.sha256:
        return spec.sha256, "configs/models.yaml"
    if locked:
        return locked.sha256, "lock"
    return "", ""


def _how_to_repin(pinned_by: str) -> str:
    if pinned_by == "lock":
        return f"delete its entry in {LOCK_FILE}"
    return f"change {pinned_by}"


def _where(pinned_by: str) -> str:
    return str(LOCK_FILE) if pinned_by == "lock" else pinned_by


def download(url: str, path: Path) -> None:
    """Stream ``url`` to ``path`` through ``path.partial`` with a progress bar.

    A ``.partial`` left by an interrupted download is resumed with an HTTP Range request (or
    restarted when the server ignores it); the size must equal the Content-Length. A truncated
    download keeps its ``.partial`` for the next run; an HTML answer is deleted."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    have = partial.stat().st_size if partial.is_file() else 0
    log.info("downloading %s to %s%s", url, path, f" (resuming at byte {have})" if have else "")
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=DOWNLOAD_TIMEOUT_SECONDS) as response:
            _refuse_html(response, url, partial)
            resumed = have and response.status == 206
            total = int(response.headers.get("Content-Length", 0)) + (have if resumed else 0)
            _copy_with_progress(response, partial, total, append=bool(resumed))
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # the partial file is complete or larger: start again
            partial.unlink()
            return download(url, path)
        raise PipelineError(
            f"cannot download {url}: HTTP {err.code} {err.reason}; check model.checkpoint_url "
            f"and the archive name, or put the file at {path}") from err
    except (urllib.error.URLError, OSError) as err:
        raise PipelineError(
            f"cannot download {url} ({getattr(err, 'reason', err)}). Offline? Download that "
            f"file on another machine and put it at {path}, or set model.checkpoint to the "
            "path of a local archive or checkpoint prefix") from err
    size = partial.stat().st_size
    if total and size != total:
        raise PipelineError(
            f"truncated download of {url}: {size} of {total} bytes received; {partial} is kept "
            "and the next run resumes it (delete it to start over)")
    os.replace(partial, path)


def _refuse_html(response, url: str, partial: Path) -> None:
    kind = response.headers.get("Content-Type", "")
    if kind.startswith(("text/html", "text/plain")):
        partial.unlink(missing_ok=True)
        raise PipelineError(
            f"{url} answered a web page ({kind}) instead of a tar.gz archive (a login, error "
            "or mirror index page?); nothing was kept: check model.checkpoint_url")


def _copy_with_progress(response, target: Path, total: int, append: bool) -> None:
    from pipeline.core import progress

    start = target.stat().st_size if append else 0
    with target.open("ab" if append else "wb") as out, progress.Bar(
            total=total or None, initial=start, unit="B", unit_scale=True,
            desc=target.name) as bar:
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


def local_checkpoint(path: Path, spec: ModelSpec, expected_sha256: str,
                     architecture: Architecture | None = None) -> str:
    """A checkpoint prefix, a folder holding one (an extracted zoo archive) or an archive."""
    if path.is_file() and path.name.endswith(ARCHIVE_SUFFIXES):
        return local_archive_checkpoint(path, spec, expected_sha256, architecture)
    if Path(f"{path}.index").is_file():
        check_architecture(_zoo_config_of(path), architecture, path.parent.parent)
        return str(path.resolve())
    if path.is_dir():
        return checked_prefix(path, architecture)
    raise PipelineError(
        f"model.checkpoint {str(path)!r} is not 'none', 'zoo', an archive "
        f"({', '.join(ARCHIVE_SUFFIXES)}), a folder with a checkpoint, nor a checkpoint prefix "
        f"({path}.index not found)")


def local_archive_checkpoint(archive: Path, spec: ModelSpec, expected_sha256: str,
                             architecture: Architecture | None = None) -> str:
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
        extract_safely(archive, target, actual, architecture)
    return checked_prefix(target, architecture)


# --- safe extraction ---------------------------------------------------------------------------


def extract_safely(archive: Path, target: Path, sha256: str,
                   architecture: Architecture | None = None) -> None:
    """Extract ``archive`` into ``target`` if every member is a plain file or folder inside it,
    it holds a checkpoint and (when it carries a ``pipeline.config``) the architecture matches.

    The members are all checked before anything is written; extraction goes to a temporary
    folder next to ``target``, renamed when complete, so a refused or failed archive leaves
    nothing behind.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        with _open_tar(archive) as tar:
            members = _read_members(tar, archive)
            for member in members:
                check_member(member, archive)
            check_has_checkpoint(members, archive)
            check_architecture(_archive_config(tar, members), architecture, archive)
            tar.extractall(staging, members=members, filter="data")
        (staging / COMPLETE_MARKER).write_text(sha256 + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


#: What a damaged tar.gz raises while it is read.
TAR_READ_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error)


def _open_tar(archive: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(archive, "r:*")
    except TAR_READ_ERRORS as err:
        reason = " ".join(str(err).split())  # tarfile lists one reason per line
        raise PipelineError(f"{archive} is not a readable tar archive ({reason}): an HTML page "
                            "or a truncated download? check the URL or the file") from err


def _read_members(tar: tarfile.TarFile, archive: Path) -> list[tarfile.TarInfo]:
    try:
        return tar.getmembers()
    except TAR_READ_ERRORS as err:
        raise PipelineError(f"{archive} is a truncated or damaged tar archive "
                            f"({' '.join(str(err).split())}); "
                            "download it again") from err


def check_has_checkpoint(members: list[tarfile.TarInfo], archive: Path) -> None:
    """Refuse an archive without a TF2 checkpoint (``ckpt-0.index`` and its data file)."""
    names = [PurePosixPath(m.name).name for m in members if m.isfile()]
    if "ckpt-0.index" not in names or not any(n.startswith("ckpt-0.data-") for n in names):
        raise PipelineError(
            f"{archive.name} holds no checkpoint (no checkpoint/ckpt-0.index with its "
            "ckpt-0.data-* file): not a TF2 model zoo archive; check model.checkpoint_url or "
            "model.checkpoint")


def _archive_config(tar: tarfile.TarFile, members: list[tarfile.TarInfo]) -> str | None:
    configs = [m for m in members if m.isfile() and PurePosixPath(m.name).name == "pipeline.config"
               and len(PurePosixPath(m.name).parts) <= 2]
    if len(configs) != 1:
        return None
    return tar.extractfile(configs[0]).read().decode("utf-8", errors="replace")


def _zoo_config_of(prefix: Path) -> str | None:
    """The ``pipeline.config`` next to a zoo-layout checkpoint (``<name>/checkpoint/ckpt-0``)."""
    config = prefix.parent.parent / "pipeline.config"
    return config.read_text() if prefix.parent.name == "checkpoint" and config.is_file() else None


def architecture_of(config) -> Architecture:
    """(meta-architecture, feature extractor type) of a parsed ``TrainEvalPipelineConfig``."""
    kind = config.model.WhichOneof("model")
    return kind, getattr(config.model, kind).feature_extractor.type


def check_architecture(config_text: str | None, expected: Architecture | None,
                       source: Path | None = None) -> None:
    """Refuse a checkpoint whose own pipeline.config is another architecture than the template."""
    if config_text is None or expected is None:
        return
    from google.protobuf import text_format

    from pipeline.core import compat
    compat.apply()
    from object_detection.protos import pipeline_pb2

    config = pipeline_pb2.TrainEvalPipelineConfig()
    try:
        text_format.Parse(config_text, config, allow_unknown_field=True)
    except text_format.ParseError as err:
        raise PipelineError(f"the pipeline.config in {source} does not parse ({err})") from err
    if config.model.WhichOneof("model") is None:
        return
    found = architecture_of(config)
    if found != expected:
        raise PipelineError(
            f"{source or 'the checkpoint'} is a {'/'.join(found)} checkpoint "
            f"(its pipeline.config), the template is {'/'.join(expected)}: its weights cannot be "
            "restored; pick the template of that architecture (model.name) or another checkpoint")


def checked_prefix(folder: Path, architecture: Architecture | None) -> str:
    """The checkpoint prefix in ``folder``, after the architecture check of its config."""
    prefix = find_checkpoint_prefix(folder)
    check_architecture(_zoo_config_of(Path(prefix)), architecture, Path(prefix).parent.parent)
    return prefix


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
