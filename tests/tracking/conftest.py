"""A shared tracking server for real, on 127.0.0.1: PostgreSQL and ``mlflow server`` on it.

``postgres`` (session): a throw-away cluster (``initdb`` in a temporary folder) served on a free
port, with a database for MLflow. ``mlflow_server`` (session): ``mlflow server`` on that database,
artifacts proxied by the server into a local folder (``--artifacts-destination``); tests may
``stop()`` and ``start()`` it again (same port, same database). Both are stopped after the
session, also when a test fails. Without PostgreSQL binaries the tests that use them skip.
"""
from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from pipeline.core.params import MlflowParams
from tests.stages.test_train_resilience import free_port, wait_for

#: where Debian's ``postgresql`` package puts the server binaries (``/usr/lib/postgresql/15/bin``)
POSTGRES_BIN_GLOB = "/usr/lib/postgresql/*/bin"
#: PostgreSQL refuses to run as root; under root the cluster belongs to this account
POSTGRES_ACCOUNT = "postgres"
STARTUP_TIMEOUT_S = 180
MLFLOW_DATABASE = "mlflow"


def postgres_bin_dir() -> Path | None:
    """The folder holding ``initdb`` and ``postgres`` (PATH first, then Debian's), if any."""
    found = shutil.which("initdb")
    candidates = [str(Path(found).resolve().parent)] if found else []
    candidates += sorted(glob.glob(POSTGRES_BIN_GLOB), reverse=True)
    return next((Path(c) for c in candidates if (Path(c) / "postgres").is_file()), None)


def server_account() -> str | None:
    """The account to run PostgreSQL as: None (this user), or ``postgres`` when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(POSTGRES_ACCOUNT)
    except KeyError:
        pytest.skip(f"running as root and there is no {POSTGRES_ACCOUNT!r} account to run "
                    "PostgreSQL as (it refuses root)")
    return POSTGRES_ACCOUNT


def log_tail(path: Path, lines: int = 30) -> str:
    """The last lines of a service's log, for a failure message."""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def stop_process(process: subprocess.Popen | None, sig: int = signal.SIGTERM,
                 whole_group: bool = True) -> None:
    """Stop a service started in its own session: ``sig`` to its process group (or to the
    process only), then SIGKILL to the group for whatever is left."""
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig) if whole_group else process.send_signal(sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@dataclass
class Postgres:
    """A PostgreSQL cluster in ``directory`` listening on 127.0.0.1:``port``."""

    bin_dir: Path
    directory: Path
    account: str | None
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def log(self) -> Path:
        return self.directory / "postgres.log"

    def dsn(self, database: str) -> str:
        """The libpq URI of ``database`` (trust authentication: no password)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of ``database`` for MLflow: psycopg2 named, since SQLAlchemy 2.1
        takes a bare ``postgresql://`` to mean psycopg 3, which is not installed."""
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """``initdb`` the cluster, start ``postgres`` and wait until it accepts connections."""
        data = self.directory / "data"
        self._run([str(self.bin_dir / "initdb"), "-D", str(data), "-U", "postgres",
                   "--auth=trust", "-E", "UTF8", "--no-sync"])
        # fsync off: a throw-away cluster need not survive a power cut.
        self.process = subprocess.Popen(
            [str(self.bin_dir / "postgres"), "-D", str(data), "-p", str(self.port),
             "-k", str(self.directory), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
             "-c", "max_connections=40"],
            stdout=self.log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
            user=self.account)
        wait_for(self._accepts_connections, STARTUP_TIMEOUT_S, f"postgres:\n{log_tail(self.log)}")

    def create_database(self, name: str) -> str:
        """Create database ``name``; its URL."""
        import psycopg2

        with contextlib.closing(psycopg2.connect(self.dsn("postgres"))) as connection:
            connection.autocommit = True  # CREATE DATABASE refuses to run in a transaction
            connection.cursor().execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def query(self, database: str, sql: str) -> list[tuple]:
        """The rows of ``sql`` run in ``database``."""
        import psycopg2

        with contextlib.closing(psycopg2.connect(self.dsn(database))) as connection:
            cursor = connection.cursor()
            cursor.execute(sql)
            return cursor.fetchall()

    def stop(self) -> None:
        """Fast shutdown (SIGINT: disconnect clients, exit cleanly, shared memory released)."""
        stop_process(self.process, signal.SIGINT, whole_group=False)

    def _accepts_connections(self) -> bool:
        import psycopg2

        if self.process.poll() is not None:
            raise AssertionError(f"postgres exited:\n{log_tail(self.log)}")
        try:
            psycopg2.connect(self.dsn("postgres"), connect_timeout=2).close()
        except psycopg2.OperationalError:
            return False
        return True

    def _run(self, cmd: list[str]) -> None:
        result = subprocess.run(cmd, capture_output=True, text=True, user=self.account,
                                cwd=self.directory, timeout=STARTUP_TIMEOUT_S)
        if result.returncode != 0:
            raise AssertionError(f"{cmd[0]} failed:\n{result.stdout}\n{result.stderr}")


@dataclass
class MlflowServer:
    """``mlflow server`` on a database, proxying artifacts into ``artifacts``."""

    backend_store_uri: str
    database: str
    artifacts: Path
    log: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        """The tracking URI clients use."""
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        """The server's command line (one worker: the machine has two cores)."""
        return [str(Path(sys.executable).parent / "mlflow"), "server",
                "--backend-store-uri", self.backend_store_uri,
                "--artifacts-destination", str(self.artifacts),
                "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]

    def start(self) -> None:
        """Start the server and wait until ``/health`` answers (it migrates the database first)."""
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
        env.pop("MLFLOW_TRACKING_URI", None)
        self.process = subprocess.Popen(
            self.command(), cwd=self.artifacts.parent, env=env, stdout=subprocess.DEVNULL,
            stderr=self.log.open("a"), start_new_session=True)
        wait_for(self._healthy, STARTUP_TIMEOUT_S, f"mlflow server:\n{log_tail(self.log)}")

    def stop(self) -> None:
        """Stop the server and its workers; the port is free afterwards."""
        stop_process(self.process)
        self.process = None
        wait_for(lambda: not self._healthy(), 30, "the mlflow server to stop answering")

    def _healthy(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"mlflow server exited:\n{log_tail(self.log)}")
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A running throw-away PostgreSQL cluster (skips without PostgreSQL binaries)."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.skip(f"PostgreSQL server binaries not found (initdb on PATH or {POSTGRES_BIN_GLOB}"
                    "; Debian: apt-get install postgresql)")
    account = server_account()
    # Not under pytest's tmp folder: that one is private to this user, and the server may run
    # as another account. mkdtemp makes it 0700; it then belongs to the server's account.
    directory = Path(tempfile.mkdtemp(prefix="odp-postgres-"))
    if account:
        shutil.chown(directory, user=account)
    cluster = Postgres(bin_dir, directory, account)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def mlflow_server(postgres, tmp_path_factory) -> Iterator[MlflowServer]:
    """``mlflow server`` on a fresh PostgreSQL database, artifacts proxied into a local folder."""
    directory = tmp_path_factory.mktemp("mlflow_server")
    server = MlflowServer(postgres.create_database(MLFLOW_DATABASE), MLFLOW_DATABASE,
                          directory / "artifacts", directory / "server.log")
    server.artifacts.mkdir()
    try:
        server.start()
        yield server
    finally:
        stop_process(server.process)


# --- a local SQLite tracking store (the fast tests) ----------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One SQLite store per test module (creating one takes seconds); each test has its own
    experiment in it."""
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'm.db'}"


@pytest.fixture
def settings(store, tmp_path, monkeypatch) -> MlflowParams:
    """MLflow settings for one test: its own experiment, artifacts under its tmp folder."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # artifacts go to ./mlruns
    return MlflowParams(experiment=tmp_path.name, tracking_uri=store)
