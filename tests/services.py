"""Local services that tests start for real on 127.0.0.1 (a Dask cluster, an S3 server), each a
subprocess stopped (by its process id) when the test ends."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from tests.paths import ROOT

#: A service that is not up after this many seconds fails the test.
START_TIMEOUT = 120


def free_port() -> int:
    """A TCP port nobody listens on right now, on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def venv_tool(name: str) -> str:
    """A command installed beside the running Python (``dask``, ``moto_server``)."""
    return str(Path(sys.executable).parent / name)


@contextmanager
def service(command: Sequence[str], log: Path, ready: Callable[[], bool]) -> Iterator[None]:
    """Run ``command`` (this checkout importable, output in ``log``) until the block ends;
    wait until ``ready()`` first."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not ready():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{command[0]} did not start: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def port_open(port: int) -> Callable[[], bool]:
    """``ready`` for a service listening on ``port`` of 127.0.0.1."""
    def ready() -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0
    return ready


@contextmanager
def dask_cluster(folder: Path, workers: int = 2) -> Iterator[str]:
    """A ``dask scheduler`` and ``workers`` ``dask worker`` processes (one thread each) on
    127.0.0.1; yields the scheduler's address."""
    from distributed import Client

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    with ExitStack() as stack:
        stack.enter_context(service(
            [venv_tool("dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
             "--no-dashboard"], folder / "scheduler.log", port_open(port)))
        for index in range(workers):
            stack.enter_context(service(
                [venv_tool("dask"), "worker", address, "--nworkers", "1", "--nthreads", "1",
                 "--no-dashboard", "--name", f"worker-{index}", "--local-directory",
                 str(folder / f"worker-{index}")], folder / f"worker-{index}.log", lambda: True))
        with Client(address, timeout=START_TIMEOUT) as client:
            client.wait_for_workers(workers, timeout=START_TIMEOUT)
        yield address


#: Credentials of the local S3 server (moto accepts any): test values, not secrets.
S3_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}


@contextmanager
def s3_server(folder: Path) -> Iterator[str]:
    """``moto_server`` (an S3-compatible server) on 127.0.0.1; yields its endpoint URL."""
    port = free_port()
    with service([venv_tool("moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                 folder / "moto.log", port_open(port)):
        yield f"http://127.0.0.1:{port}"
