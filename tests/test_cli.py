"""The command line: help without TensorFlow, --verbose, predict outside a project, `odp`."""
import os
import subprocess
import sys
import tomllib
import types

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
    assert project["scripts"]["odp"] == "pipeline.cli:console_main"


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


def test_exit_without_teardown_does_what_a_normal_exit_does_first(tmp_path):
    """Non-daemon threads finish, atexit handlers run, buffered output is written, the code
    is the process's exit status; only the interpreter's teardown of modules is skipped."""
    program = (
        "import atexit, sys, threading, time\n"
        "from pathlib import Path\n"
        "from pipeline import cli\n"
        f"folder = Path({str(tmp_path)!r})\n"
        "atexit.register(lambda: (folder / 'atexit').write_text('ran'))\n"
        "def late():\n"
        "    time.sleep(0.3)\n"
        "    (folder / 'thread').write_text('done')\n"
        "threading.Thread(target=late).start()\n"
        "sys.stdout.write('buffered, no newline')\n"
        "cli.exit_without_teardown(3)\n")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 3, result.stderr
    assert result.stdout == "buffered, no newline"
    assert (tmp_path / "atexit").read_text() == "ran"
    assert (tmp_path / "thread").read_text() == "done"


def test_with_tensorflow_loaded_the_exit_is_a_normal_one(monkeypatch):
    # TF event-file writers flush when destroyed: those processes keep Python's teardown.
    monkeypatch.setitem(sys.modules, "tensorflow", types.ModuleType("tensorflow"))
    with pytest.raises(SystemExit) as exited:
        cli.exit_without_teardown(4)
    assert exited.value.code == 4


@pytest.mark.parametrize("package", ["tqdm", "pydantic"])
def test_a_missing_package_is_one_line_naming_it_not_a_traceback(package):
    # As a Python without the project's environment would run it (`python -m pipeline` or
    # `odp`): the package cannot be imported.
    program = (f"import sys\nsys.modules[{package!r}] = None\n"
               "sys.argv = ['odp', 'train', '--help']\n"
               "from pipeline import cli\ncli.console_main()\n")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"has no module {package!r}, which the project needs" in result.stderr
    assert "make setup" in result.stderr and sys.executable in result.stderr
