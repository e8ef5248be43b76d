"""model.checkpoint: the zoo download path runs for real against an HTTP server on 127.0.0.1
serving tar.gz archives built here from a real (tiny) TF checkpoint."""
from __future__ import annotations

import datetime
import functools
import http.server
import io
import re
import shutil
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from pipeline.odapi import checkpoints
from pipeline.core.errors import PipelineError
from pipeline.core.params import ModelParams
from pipeline.odapi.templates import ModelSpec

ARCHIVE = "tiny_detector_coco17_tpu-8"
SPEC = ModelSpec(description="test", reference_batch_size=8, reference_learning_rate=0.01,
                 zoo_archive=ARCHIVE)
KERNEL = np.arange(12, dtype=np.float32).reshape(3, 4)


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory) -> Path:
    """A zoo-style folder: <ARCHIVE>/checkpoint/ckpt-0.* of a tiny Keras model, pipeline.config."""
    import tensorflow as tf

    root = tmp_path_factory.mktemp("zoo") / ARCHIVE
    layer = tf.keras.layers.Dense(4, use_bias=False)
    layer.build((None, 3))
    layer.kernel.assign(KERNEL)
    tf.train.Checkpoint(model=layer).write(str(root / "checkpoint" / "ckpt-0"))
    (root / "pipeline.config").write_text("model { ssd { num_classes: 1 } }\n")
    return root


def make_archive(path: Path, source: Path, extra: list[tarfile.TarInfo] = ()) -> Path:
    """tar.gz of ``source`` (as the zoo lays it out), plus hand-made ``extra`` members."""
    with tarfile.open(path, "w:gz") as tar:
        tar.add(source, arcname=source.name)
        for member in extra:
            data = b"evil" if member.isfile() else None
            if data:
                member.size = len(data)
            tar.addfile(member, io.BytesIO(data) if data else None)
    return path


def member(name: str, kind=tarfile.REGTYPE, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


class Server:
    """HTTP server on 127.0.0.1 serving a folder, with Range requests (206) as real servers do.

    ``mode`` misbehaves on purpose: "truncate" announces the full Content-Length but sends only
    half the bytes, "html" answers a web page. ``requests`` counts the GETs, ``ranges`` the
    Range headers received."""

    def __init__(self, folder: Path):
        self.requests, self.ranges, self.mode = 0, [], "normal"
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests += 1
                path = folder / self.path.lstrip("/")
                if outer.mode == "html":
                    return self.answer(200, b"<!DOCTYPE html><html>Sign in</html>", "text/html")
                if not path.is_file():
                    return self.answer(404, b"not found", "text/plain")
                data, status = path.read_bytes(), 200
                if header := self.headers.get("Range"):
                    outer.ranges.append(header)
                    start = int(header.split("=")[1].rstrip("-"))
                    if start >= len(data):
                        return self.answer(416, b"", "text/plain")
                    data, status = data[start:], 206
                sent = data[: len(data) // 2] if outer.mode == "truncate" else data
                self.answer(status, sent, "application/x-tar", length=len(data))

            def answer(self, status, body, kind, length=None):
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/models"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def zoo(tmp_path, monkeypatch):
    """A served zoo folder (``zoo.folder / 'models'``), an empty cache and lock file."""
    folder = tmp_path / "served"
    (folder / "models").mkdir(parents=True)
    server = Server(folder)
    monkeypatch.setenv("OD_PIPELINE_ZOO_URL", server.url)
    monkeypatch.setenv("OD_PIPELINE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(checkpoints, "LOCK_FILE", tmp_path / "checkpoints.lock")
    server.folder = folder / "models"
    server.cache = tmp_path / "cache"
    server.lock = tmp_path / "checkpoints.lock"
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def publish(zoo, checkpoint_dir: Path, extra=()) -> str:
    archive = make_archive(zoo.folder / f"{ARCHIVE}.tar.gz", checkpoint_dir, list(extra))
    return checkpoints.sha256_of(archive)


def zoo_params(sha256: str = "") -> ModelParams:
    return ModelParams(checkpoint="zoo", checkpoint_sha256=sha256)


def leftovers(cache: Path) -> list[str]:
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*")) if cache.exists() else []


def test_zoo_checkpoint_is_downloaded_verified_extracted_and_cached(zoo, checkpoint_dir):
    import tensorflow as tf

    sha = publish(zoo, checkpoint_dir)
    prefix = checkpoints.resolve(zoo_params(sha), SPEC)
    assert prefix == str((zoo.cache / "checkpoints" / ARCHIVE / ARCHIVE / "checkpoint"
                          / "ckpt-0").resolve())
    reader = tf.train.load_checkpoint(prefix)
    assert np.array_equal(reader.get_tensor("model/kernel/.ATTRIBUTES/VARIABLE_VALUE"), KERNEL)
    assert zoo.requests == 1
    # A second run (any project on the machine) uses the cache: no new request.
    assert checkpoints.resolve(zoo_params(sha), SPEC) == prefix
    assert zoo.requests == 1
    assert not [p for p in leftovers(zoo.cache) if "partial" in p or "/.tiny" in p]  # no staging


def test_the_pin_in_models_yaml_is_used_when_params_pin_nothing(zoo, checkpoint_dir):
    sha = publish(zoo, checkpoint_dir)
    spec = ModelSpec(**{**SPEC.__dict__, "sha256": sha})
    assert checkpoints.resolve(zoo_params(), spec).endswith("ckpt-0")


def test_checksum_mismatch_is_refused_and_leaves_nothing(zoo, checkpoint_dir):
    publish(zoo, checkpoint_dir)
    with pytest.raises(PipelineError, match=f"checksum mismatch for {ARCHIVE}.tar.gz: "
                                            "model.checkpoint_sha256 expects sha256 0{64}, got "
                                            "[0-9a-f]{64} .*change model.checkpoint_sha256"):
        checkpoints.resolve(zoo_params("0" * 64), SPEC)
    assert leftovers(zoo.cache) == ["archives"]


def test_the_first_download_is_pinned_in_the_lock_and_later_copies_must_match(
        zoo, checkpoint_dir, tmp_path, caplog):
    sha = publish(zoo, checkpoint_dir)
    size = (zoo.folder / f"{ARCHIVE}.tar.gz").stat().st_size
    prefix = checkpoints.resolve(zoo_params(), SPEC)
    entry = checkpoints.read_lock(zoo.lock)[ARCHIVE]
    assert (entry.sha256, entry.size, entry.url) == (sha, size, f"{zoo.url}/{ARCHIVE}.tar.gz")
    assert entry.date.startswith(str(datetime.date.today().year))
    assert [r.message for r in caplog.records].count(next(
        r.message for r in caplog.records if "pinned on first use" in r.message)) == 1
    # The cached copy is used (no request); a fresh download is checked against the lock.
    assert checkpoints.resolve(zoo_params(), SPEC) == prefix and zoo.requests == 1
    shutil.rmtree(zoo.cache)
    assert checkpoints.resolve(zoo_params(), SPEC) == prefix and zoo.requests == 2
    # The publisher's file changes: refused with both hashes, nothing extracted, lock unchanged.
    other = tmp_path / "other" / ARCHIVE
    shutil.copytree(checkpoint_dir, other)
    (other / "pipeline.config").write_text("model { ssd { num_classes: 2 } }\n")
    changed = publish(zoo, other)
    shutil.rmtree(zoo.cache)
    with pytest.raises(PipelineError, match=f"checksum mismatch for {ARCHIVE}.tar.gz: "
                       f"{re.escape(str(zoo.lock))} expects sha256 {sha} \\({size} bytes, first "
                       f"downloaded .*, got {changed} .*nothing extracted"):
        checkpoints.resolve(zoo_params(), SPEC)
    assert leftovers(zoo.cache) == ["archives"]
    assert checkpoints.read_lock(zoo.lock)[ARCHIVE] == entry


def test_a_pin_in_params_wins_over_the_lock(zoo, checkpoint_dir):
    sha = publish(zoo, checkpoint_dir)
    zoo.lock.write_text(f"{ARCHIVE}: {{sha256: {'b' * 64}, size: 5, url: x, date: 2026-01-01}}\n")
    assert checkpoints.resolve(zoo_params(sha), SPEC).endswith("ckpt-0")
    with pytest.raises(PipelineError, match="checksum mismatch .*checkpoints.lock expects"):
        checkpoints.resolve(zoo_params(), SPEC)


def test_checkpoint_url_replaces_the_base_url(zoo, checkpoint_dir, monkeypatch):
    monkeypatch.setenv("OD_PIPELINE_ZOO_URL", "http://127.0.0.1:9/nothing-listens")
    publish(zoo, checkpoint_dir)
    params = ModelParams(checkpoint="zoo", checkpoint_url=zoo.url + "/")
    assert checkpoints.resolve(params, SPEC).endswith("ckpt-0") and zoo.requests == 1
    assert checkpoints.ZOO_BASE_URL.startswith("https://")


def test_a_truncated_download_is_refused_then_resumed_with_a_range_request(zoo, checkpoint_dir):
    sha = publish(zoo, checkpoint_dir)
    size = (zoo.folder / f"{ARCHIVE}.tar.gz").stat().st_size
    zoo.mode = "truncate"
    partial = zoo.cache / "archives" / f"{ARCHIVE}.tar.gz.partial"
    with pytest.raises(PipelineError, match=f"truncated download of .*{ARCHIVE}.tar.gz: "
                                            f"{size // 2} of {size} bytes received; .*resumes"):
        checkpoints.resolve(zoo_params(), SPEC)
    assert partial.stat().st_size == size // 2
    assert "checkpoints" not in leftovers(zoo.cache) and not zoo.lock.exists()
    zoo.mode = "normal"
    assert checkpoints.resolve(zoo_params(), SPEC).endswith("ckpt-0")
    assert zoo.ranges == [f"bytes={size // 2}-"]
    assert checkpoints.read_lock(zoo.lock)[ARCHIVE].sha256 == sha and not partial.exists()


def test_a_partial_file_is_restarted_when_the_server_ignores_range(zoo, checkpoint_dir):
    sha = publish(zoo, checkpoint_dir)
    partial = zoo.cache / "archives" / f"{ARCHIVE}.tar.gz.partial"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"x" * 10_000)  # larger than the archive: 416, then a clean restart
    assert checkpoints.resolve(zoo_params(sha), SPEC).endswith("ckpt-0")


def test_an_html_answer_is_refused_and_nothing_is_kept(zoo, checkpoint_dir):
    publish(zoo, checkpoint_dir)
    zoo.mode = "html"
    with pytest.raises(PipelineError, match=r"answered a web page \(text/html\) instead of a "
                                            "tar.gz archive.*check model.checkpoint_url"):
        checkpoints.resolve(zoo_params(), SPEC)
    assert leftovers(zoo.cache) == ["archives"] and not zoo.lock.exists()


def test_an_html_page_saved_as_the_archive_is_refused(zoo):
    (zoo.folder / f"{ARCHIVE}.tar.gz").write_text("<!DOCTYPE html><html>404</html>")
    with pytest.raises(PipelineError, match=f"{ARCHIVE}.tar.gz is not a readable tar archive"
                                            r" \(file could not be opened successfully: - method gz"
                                            ".*the archive was deleted"):
        checkpoints.resolve(zoo_params(), SPEC)
    assert leftovers(zoo.cache) == ["archives", "checkpoints"] and not zoo.lock.exists()


def test_an_archive_without_checkpoint_is_refused(zoo, checkpoint_dir, tmp_path):
    empty = tmp_path / "nockpt" / ARCHIVE
    empty.mkdir(parents=True)
    (empty / "pipeline.config").write_text("model { ssd { num_classes: 1 } }\n")
    publish(zoo, empty)
    with pytest.raises(PipelineError, match=f"{ARCHIVE}.tar.gz holds no checkpoint .*ckpt-0.index"):
        checkpoints.resolve(zoo_params(), SPEC)
    assert leftovers(zoo.cache) == ["archives", "checkpoints"] and not zoo.lock.exists()


@pytest.mark.parametrize("entry, message", [
    ("{sha256: abc, size: 5, url: u, date: d}", "sha256 must be 64 lowercase hex digits"),
    ("{sha256: " + "a" * 64 + ", url: u, date: d}", r"missing key\(s\) \['tiny_detector_coco17_tpu-8.size'\]"),
    ("{sha256: " + "a" * 64 + ", size: -1, url: u, date: d}", "size must be in"),
    ("just text", "must be a mapping"),
])
def test_a_lock_entry_edited_by_hand_is_a_clear_error(zoo, entry, message):
    zoo.lock.write_text(f"{ARCHIVE}: {entry}\n")
    with pytest.raises(PipelineError, match=f"{re.escape(str(zoo.lock))} is damaged \\(edited by "
                                            f"hand\\?\\): .*{message}.*restore it with git"):
        checkpoints.resolve(zoo_params(), SPEC)
    assert not zoo.cache.exists()


def test_a_checkpoint_of_another_architecture_is_refused(zoo, checkpoint_dir, tmp_path):
    other = tmp_path / "frcnn" / ARCHIVE
    shutil.copytree(checkpoint_dir, other)
    (other / "pipeline.config").write_text(
        'model { faster_rcnn { num_classes: 90 feature_extractor { type: '
        '"faster_rcnn_resnet50_keras" } } }\n')
    publish(zoo, other)
    with pytest.raises(PipelineError, match=f"{ARCHIVE}.tar.gz is a faster_rcnn/faster_rcnn_resnet50"
                                            "_keras checkpoint .*the template is ssd/ssd_mobilenet"
                                            "_v2_keras: .*pick the template"):
        checkpoints.resolve(zoo_params(), SPEC, ("ssd", "ssd_mobilenet_v2_keras"))
    assert leftovers(zoo.cache) == ["archives", "checkpoints"] and not zoo.lock.exists()
    # The same check for a folder in the zoo's layout given as a local path.
    with pytest.raises(PipelineError, match="pipeline.config.*is a faster_rcnn/|is a faster_rcnn/"):
        checkpoints.resolve(ModelParams(checkpoint=str(other)), SPEC,
                            ("ssd", "ssd_mobilenet_v2_keras"))


@pytest.mark.parametrize("evil, message", [
    (member(f"{ARCHIVE}/../../escaped.txt"), "would be written outside the target folder"),
    (member("/tmp/absolute.txt"), "would be written outside the target folder"),
    (member(f"{ARCHIVE}/link", tarfile.SYMTYPE, "/etc/passwd"), "is a symlink"),
    (member(f"{ARCHIVE}/inner", tarfile.SYMTYPE, "checkpoint"), "is a symlink"),
    (member(f"{ARCHIVE}/hard", tarfile.LNKTYPE, f"{ARCHIVE}/pipeline.config"), "is a hard link"),
    (member(f"{ARCHIVE}/fifo", tarfile.FIFOTYPE), "is a special file"),
])
def test_unsafe_archives_are_refused_and_leave_nothing_behind(zoo, checkpoint_dir, tmp_path,
                                                              evil, message):
    sha = publish(zoo, checkpoint_dir, [evil])
    with pytest.raises(PipelineError, match=f"unsafe archive {ARCHIVE}.tar.gz: .*{message}.*"
                                            "the archive was deleted"):
        checkpoints.resolve(zoo_params(sha), SPEC)
    assert leftovers(zoo.cache) == ["archives", "checkpoints"]  # both empty
    assert not (tmp_path / "escaped.txt").exists() and not Path("/tmp/absolute.txt").exists()


def test_offline_error_says_where_to_put_a_local_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("OD_PIPELINE_ZOO_URL", "http://127.0.0.1:9/models")  # nothing listens
    monkeypatch.setenv("OD_PIPELINE_CACHE", str(tmp_path / "cache"))
    expected = tmp_path / "cache" / "archives" / f"{ARCHIVE}.tar.gz"
    with pytest.raises(PipelineError, match=f"cannot download .*Offline\\? .*put it at {expected}"):
        checkpoints.resolve(zoo_params("a" * 64), SPEC)
    assert leftovers(tmp_path / "cache") == ["archives"]


def test_a_local_copy_in_the_cache_is_used_offline(tmp_path, monkeypatch, checkpoint_dir):
    monkeypatch.setenv("OD_PIPELINE_ZOO_URL", "http://127.0.0.1:9/models")
    monkeypatch.setenv("OD_PIPELINE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache" / "archives").mkdir(parents=True)
    archive = make_archive(tmp_path / "cache" / "archives" / f"{ARCHIVE}.tar.gz", checkpoint_dir)
    prefix = checkpoints.resolve(zoo_params(checkpoints.sha256_of(archive)), SPEC)
    assert Path(prefix + ".index").is_file()


def test_a_template_without_zoo_archive_refuses_zoo():
    spec = ModelSpec(description="x", reference_batch_size=1, reference_learning_rate=0.1)
    with pytest.raises(PipelineError, match="has no model zoo checkpoint"):
        checkpoints.resolve(zoo_params(), spec)


def test_local_prefix_folder_and_archive(tmp_path, monkeypatch, checkpoint_dir):
    monkeypatch.setenv("OD_PIPELINE_CACHE", str(tmp_path / "cache"))
    prefix = checkpoint_dir / "checkpoint" / "ckpt-0"
    local = functools.partial(ModelParams, name="ssd_mobilenet_v2_fpnlite_cpu")
    assert checkpoints.resolve(local(checkpoint=str(prefix)), SPEC) == str(prefix)
    assert checkpoints.resolve(local(checkpoint=str(checkpoint_dir)), SPEC) == str(prefix)
    archive = make_archive(tmp_path / "mine.tgz", checkpoint_dir)
    from_archive = checkpoints.resolve(local(checkpoint=str(archive)), SPEC)
    assert Path(from_archive + ".index").is_file() and str(tmp_path / "cache") in from_archive
    with pytest.raises(PipelineError, match="checksum mismatch for .*mine.tgz"):
        checkpoints.resolve(local(checkpoint=str(archive), checkpoint_sha256="f" * 64), SPEC)
    assert archive.is_file()  # a user's own file is never deleted


def test_a_local_unsafe_archive_is_refused(tmp_path, monkeypatch, checkpoint_dir):
    monkeypatch.setenv("OD_PIPELINE_CACHE", str(tmp_path / "cache"))
    archive = make_archive(tmp_path / "mine.tar.gz", checkpoint_dir, [member("../x")])
    with pytest.raises(PipelineError, match="member '../x' would be written outside"):
        checkpoints.resolve(ModelParams(checkpoint=str(archive)), SPEC)
    assert leftovers(tmp_path / "cache") == ["checkpoints"]


def test_a_path_that_is_no_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(PipelineError, match=r"is not 'none', 'zoo', an archive .*\.index not found"):
        checkpoints.resolve(ModelParams(checkpoint=str(tmp_path / "nothing")), SPEC)
