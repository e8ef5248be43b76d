"""pipeline.data.storage: remote paths through Beam's FileSystems, and the conversion from
``s3://`` to ``s3://`` against a real local S3 server."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.core.errors import PipelineError
from pipeline.core.files import MARKER
from pipeline.core.params import ConvertParams, DataParams, SampleParams
from pipeline.data import storage
from pipeline.data.conversion import convert_dataset
from pipeline.data.labelmap import read_label_map
from pipeline.data.readers import registry
from pipeline.data.readers.voc import read_voc
from pipeline.data.sample import generate

from tests.data.helpers import assert_decoded_match
from tests.services import S3_KEYS, s3_server


def test_remote_paths_never_become_pathlib_paths() -> None:
    """pathlib turns s3://b/x into s3:/b/x; remote paths keep their URL (no I/O here; gs://
    works the same with apache-beam[gcp], not installed here)."""
    root = storage.path("s3://bucket/data/")
    assert isinstance(root, storage.RemotePath) and str(root) == "s3://bucket/data"
    image = root / "JPEGImages" / "a.jpg"
    assert str(image) == "s3://bucket/data/JPEGImages/a.jpg"
    assert (image.name, image.stem, image.suffix) == ("a.jpg", "a", ".jpg")
    assert str(image.with_suffix(".xml")) == "s3://bucket/data/JPEGImages/a.xml"
    assert str(image.parent) == "s3://bucket/data/JPEGImages"
    assert image.relative_to(root).as_posix() == "JPEGImages/a.jpg"
    assert storage.join("s3://b/out", "plots", "x.png") == "s3://b/out/plots/x.png"
    assert isinstance(storage.path("data/sample"), Path)  # local: a Path, as before
    assert storage.join("data/out", "x") == "data/out/x"
    assert not storage.is_remote("file:///tmp/x") and storage.is_remote("gs://b")


def test_yolo_refuses_remote_datasets_with_a_clear_message(tmp_path: Path) -> None:
    data = DataParams(format="yolo", root="s3://bucket/yolo")
    with pytest.raises(PipelineError, match="yolo reads local folders only, got s3://bucket/yolo"):
        registry.reader("yolo")(storage.path(data.root), data)


@pytest.mark.slow
def test_convert_from_s3_to_s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A VOC dataset in a bucket of a moto_server started here is converted to the bucket: the
    records read back from the bucket decode to the dataset's boxes; the report, label map and
    marker are there, nothing is left in ``.partial``; a foreign prefix is never replaced."""
    import boto3

    for name, value in S3_KEYS.items():
        monkeypatch.setenv(name, value)
    dataset = tmp_path / "voc"
    generate(SampleParams(num_images=12), dataset)
    with s3_server(tmp_path) as endpoint:
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="lab")
        for file in (f for f in dataset.rglob("*") if f.is_file()):
            s3.upload_file(str(file), "lab", f"voc/{file.relative_to(dataset).as_posix()}")
        s3.put_object(Bucket="lab", Key="theirs/notes.txt", Body=b"not ours")
        convert = ConvertParams(pipeline_args=(
            f"--s3_endpoint_url={endpoint}", "--s3_access_key_id=testing",
            "--s3_secret_access_key=$AWS_SECRET_ACCESS_KEY", "--s3_region_name=us-east-1"))
        data = DataParams(format="voc", root="s3://lab/voc")
        report = convert_dataset(data, convert, "s3://lab/records")
        with pytest.raises(PipelineError, match="not written by this project"):
            convert_dataset(data, convert, "s3://lab/theirs")
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket="lab")["Contents"]}
        local = tmp_path / "downloaded"
        for key in (k for k in keys if k.startswith("records/")):
            (local / key).parent.mkdir(parents=True, exist_ok=True)
            s3.download_file("lab", key, str(local / key))
    assert not any(k.startswith(("records.partial/", "theirs.partial/")) for k in keys)
    assert "theirs/notes.txt" in keys
    out = local / "records"
    assert {MARKER, "data_report.json", "data_report.md", "label_map.pbtxt"} <= {
        f.name for f in out.iterdir()}
    assert report["images"] == 12 and report["root"] == "s3://lab/voc"
    records = read_voc(dataset)
    assert_decoded_match(records, out, read_label_map(out / "label_map.pbtxt"))
