"""No secret is printed, logged or recorded: tracking URI credentials and secret pipeline args."""
from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from PIL import Image

from pipeline.tracking import journal as tracking
from pipeline.core.redaction import redact


@pytest.mark.parametrize("text, expected", [
    ("http://user:pw@host:5000/api", "http://***@host:5000/api"),
    ("sqlite:///mlflow.db", "sqlite:///mlflow.db"),
    ("--aws_secret_access_key=abc", "--aws_secret_access_key=***"),
    ("--password hunter2 --runner x", "--password *** --runner x"),
    ("unparseable args: ['--api_token', 'abc', '--runner', 'x']",
     "unparseable args: ['--api_token', '***', '--runner', 'x']"),
    ("s3://bucket/x?sas_token=abc&y=1", "s3://bucket/x?sas_token=***&y=1"),
    ("num_keypoints=3 --direct_num_workers 2", "num_keypoints=3 --direct_num_workers 2"),
])
def test_redact_text(text, expected):
    assert redact(text) == expected


def test_redact_argument_lists():
    args = ("--runner", "DataflowRunner", "--service_account_credential", "abc",
            "--aws_access_key_id=AKIA", "--temp_location", "gs://b/t")
    assert redact(args) == ("--runner", "DataflowRunner", "--service_account_credential", "***",
                            "--aws_access_key_id=***", "--temp_location", "gs://b/t")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _small_voc(root: Path) -> None:
    for folder in ("pics", "labels"):
        (root / folder).mkdir(parents=True)
    for index in range(6):
        Image.new("RGB", (40, 30), (200, 10, 10)).save(root / "pics" / f"p{index}.jpg")
        (root / "labels" / f"p{index}.xml").write_text(
            f"<annotation><filename>p{index}.jpg</filename><size><width>40</width>"
            "<height>30</height></size><object><name>cat</name><bndbox><xmin>1</xmin>"
            "<ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object></annotation>")


def test_planted_secrets_appear_in_no_log_journal_mlflow_record_or_output(
        tmp_path, monkeypatch, capsys, caplog):
    """Convert with credentials in the tracking URI and secret Beam args, the server down;
    then sync to a real store. Every output is searched for the secrets."""
    from mlflow.tracking import MlflowClient

    from pipeline import cli

    secrets = ["PLANTED-URI-PASSWORD", "PLANTED-ARG-SECRET", "PLANTED-TOKEN"]
    monkeypatch.chdir(tmp_path)
    _small_voc(tmp_path)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = tmp_path / "params.yaml"
    params.write_text(
        "convert:\n  pipeline_args: ['--aws_secret_access_key=PLANTED-ARG-SECRET',"
        " '--api_token', 'PLANTED-TOKEN']\n"
        f"mlflow:\n  tracking_uri: {store}\n  http_max_retries: 0\n  http_timeout_s: 2\n")
    for name in ("MAX_RETRIES", "TIMEOUT", "BACKOFF_FACTOR"):
        monkeypatch.setenv(f"MLFLOW_HTTP_REQUEST_{name}", "0" if name != "TIMEOUT" else "2")
    monkeypatch.setenv("MLFLOW_TRACKING_URI",
                       f"http://user:PLANTED-URI-PASSWORD@127.0.0.1:{_closed_port()}")
    out = tmp_path / "out"
    assert cli.main(["convert", "--params", str(params), "--format", "voc",
                     "--images", "pics", "--annotations", "labels", "--output", str(out)]) == 0
    journal_files = list(tmp_path.glob(f"{tracking.JOURNALS_DIR}/**/*"))
    assert any(p.name == tracking.JOURNAL_FILE for p in journal_files)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert cli.main(["sync-mlflow", "--params", str(params)]) == 0
    assert cli.main(["sync-mlflow", "--params", str(params)]) == 0

    printed = capsys.readouterr()
    searched = {"stdout": printed.out, "stderr": printed.err, "log": caplog.text}
    assert "unreachable" in printed.err and "http://***@127.0.0.1" in printed.err
    for path in [*journal_files, *out.rglob("*")]:
        if path.is_file():
            searched[str(path)] = path.read_bytes().decode("latin-1")
    client = MlflowClient(store)
    [run] = client.search_runs([client.get_experiment_by_name("object-detection").experiment_id])
    assert json.loads(run.data.params["convert.pipeline_args"].replace("'", '"')) == [
        "--aws_secret_access_key=***", "--api_token", "***"]
    searched["mlflow"] = json.dumps([run.data.params, run.data.tags])
    leaks = [(where, secret) for where, text in searched.items() for secret in secrets
             if secret in text]
    assert leaks == [], printed.err


def test_pipeline_args_take_secrets_from_the_environment(monkeypatch):
    from apache_beam.options.pipeline_options import S3Options

    from pipeline.data.conversion import pipeline_options
    from pipeline.core.params import ConvertParams

    monkeypatch.setenv("MY_S3_SECRET", "from-env")
    convert = ConvertParams(pipeline_args=("--s3_secret_access_key=${MY_S3_SECRET}",))
    options = pipeline_options(convert, num_images=1)
    assert options.view_as(S3Options).s3_secret_access_key == "from-env"
