"""model.checkpoint: the zoo download path runs for real against an HTTP server on 127.0.0.1
serving tar.gz archives built here from a real (tiny) TF checkpoint."""
from __future__ import annotations

import functools
import http.server
import io
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from pipeline import checkpoints
from pipeline.errors import PipelineError
from pipeline.params import ModelParams
from pipeline.zoo import ModelSpec

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
    """http.server on 127.0.0.1 serving a folder; counts the requests it answered."""

    def __init__(self, folder: Path):
        self.requests = 0
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                outer.requests += 1
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/models"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def zoo(tmp_path, monkeypatch):
    """A served zoo folder (``zoo.folder / 'models'``) and an empty cache, wired by env vars."""
    folder = tmp_path / "served"
    (folder / "models").mkdir(parents=True)
    server = Server(folder)
    monkeypatch.setenv("OD_PIPELINE_ZOO_URL", server.url)
    monkeypatch.setenv("OD_PIPELINE_CACHE", str(tmp_path / "cache"))
    server.folder = folder / "models"
    server.cache = tmp_path / "cache"
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
                                            "expected sha256 0{64}, got [0-9a-f]{64}"):
        checkpoints.resolve(zoo_params("0" * 64), SPEC)
    assert leftovers(zoo.cache) == ["archives"]


def test_an_unpinned_archive_is_not_extracted_and_its_checksum_is_shown(zoo, checkpoint_dir):
    sha = publish(zoo, checkpoint_dir)
    with pytest.raises(PipelineError, match=f"no sha256 is pinned .* Its sha256 is {sha}.*"
                                            f"model.checkpoint_sha256: {sha}"):
        checkpoints.resolve(zoo_params(), SPEC)
    assert "checkpoints" not in leftovers(zoo.cache)
    # Once pinned, the cached download is verified and used without downloading again.
    assert checkpoints.resolve(zoo_params(sha), SPEC).endswith("ckpt-0")
    assert zoo.requests == 1


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
