"""The command line: help without TensorFlow, --verbose, predict outside a project, `odp`."""
import os
import subprocess
import sys
import tomllib

import pytest

from pipeline import cli
from tests.paths import ROOT


def run_cli(args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, text=True,
                          capture_output=True, env={**os.environ, **(env or {})}, timeout=120)


def test_predict_runs_outside_a_project_without_a_params_file(tmp_path):
    image = tmp_path / "a.jpg"
    image.write_bytes(b"not really")
    result = run_cli(["predict", "--model", str(tmp_path / "nowhere"), str(image)], cwd=tmp_path)
    assert result.returncode == 1
    assert "params" not in result.stderr  # no "params file not found": the model is the problem
    assert "no SavedModel at" in result.stderr


def test_stages_that_need_params_still_refuse_a_missing_params_file(tmp_path):
    result = run_cli(["check-params"], cwd=tmp_path)
    assert result.returncode == 2
    assert "params file not found" in result.stderr


def test_every_stage_accepts_verbose():
    for stage in cli.STAGES:
        if stage == "predict":
            continue  # its required arguments are tested above
        args = cli.build_parser(stage).parse_args([stage, "--verbose"])
        assert args.verbose is True




def test_the_odp_console_script_is_the_cli():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["odp"] == "pipeline.cli:main"


@pytest.mark.parametrize("argv0, name", [("/venv/bin/odp", "odp"),
                                         ("/x/pipeline/__main__.py", "python -m pipeline")])
def test_help_names_the_command_the_user_typed(monkeypatch, argv0, name):
    monkeypatch.setattr(sys, "argv", [argv0])
    assert cli.build_parser(None).prog == name


def test_no_stage_help_imports_tensorflow(tmp_path):
    """`<stage> --help` is instant: TensorFlow (seconds to import) is loaded only to work."""
    probe = (
        "import contextlib, io, sys\n"
        "from pipeline import cli\n"
        "for stage in cli.STAGES:\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try:\n"
        "            cli.main([stage, '--help'])\n"
        "        except SystemExit:\n"
        "            pass\n"
        "    if 'tensorflow' in sys.modules:\n"
        "        print(stage)\n"
        "        break\n")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, text=True,
                            capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"{result.stdout.strip()} --help imports TensorFlow"
