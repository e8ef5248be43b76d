"""tools/find_python.sh: the Python `make setup` builds the environment with."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.paths import ROOT

SCRIPT = ROOT / "tools" / "find_python.sh"


def find_python(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """Run the script with a PATH of ``tmp_path/bin`` alone (plus the two tools it calls), so
    that the machine's own Pythons (/usr/bin/python3.X) are not found."""
    tools = tmp_path / "bin"
    tools.mkdir(exist_ok=True)
    for tool in ("ls", "sort"):
        if not (tools / tool).exists():
            (tools / tool).symlink_to(shutil.which(tool))
    env = {"PATH": str(tools), "PYENV_ROOT": str(tmp_path / "pyenv")}
    return subprocess.run([shutil.which("sh"), str(SCRIPT), *args], capture_output=True,
                          text=True, env=env, timeout=60)


def test_the_newest_supported_python_on_path_is_chosen(tmp_path):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python3.13").symlink_to(sys.executable)
    broken = tmp_path / "bin" / "python3.12"  # a pyenv shim of an inactive version fails so
    broken.write_text("#!/bin/sh\nexit 127\n")
    broken.chmod(0o755)
    result = find_python(tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "bin" / "python3.13")


def test_a_version_is_found_among_pyenv_versions(tmp_path):
    version = "%d.%d" % sys.version_info[:2]
    installed = tmp_path / "pyenv" / "versions" / f"{version}.1" / "bin"
    installed.mkdir(parents=True)
    (installed / f"python{version}").symlink_to(sys.executable)
    result = find_python(tmp_path, version)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(installed / f"python{version}")


def test_no_supported_python_is_one_line_naming_the_versions(tmp_path):
    result = find_python(tmp_path, "3.10")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "3.13, 3.12 or 3.11" in result.stderr


def test_an_unsupported_interpreter_is_refused(tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    result = find_python(tmp_path, str(fake))
    assert result.returncode == 1 and "supports Python 3.13 3.12 3.11" in result.stderr
    assert os.access(SCRIPT, os.X_OK)
