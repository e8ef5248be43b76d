"""pipeline.core.logs: TensorFlow's import-time native lines are dropped, nothing else is."""
import os
import subprocess
import sys

from pipeline.core import logs
from tests.paths import ROOT

CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith(("ODP_", "TF_CPP"))}


def import_tensorflow(extra_env=None) -> str:
    result = subprocess.run([sys.executable, "-c", "import pipeline, tensorflow"], text=True,
                            capture_output=True, cwd=ROOT, env={**CLEAN_ENV, **(extra_env or {})},
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stderr


def test_importing_tensorflow_prints_nothing_by_default_and_everything_when_verbose():
    assert import_tensorflow() == ""
    loud = import_tensorflow({logs.VERBOSE_ENV: "1"})
    assert "absl::InitializeLog" in loud  # what is hidden by default is really printed


def test_captured_stderr_gives_back_every_line_that_is_not_known_noise(capfd):
    with logs._captured_stderr():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are "
                    b"written to STDERR\n")
        os.write(2, b"I0000 00:00:1796007691.524082    1645 port.cc:153] oneDNN custom ops\n")
        os.write(2, b"E0000 00:00:1796007691.524082    1645 real_problem.cc:1] disk full\n")
        print("a Python warning", file=sys.stderr)
    err = capfd.readouterr().err
    assert "disk full" in err and "a Python warning" in err
    assert "oneDNN" not in err and "InitializeLog" not in err


def test_a_failed_import_shows_everything_it_printed(capfd):
    captured = None
    try:
        with logs._captured_stderr() as captured:
            os.write(2, b"I0000 00:00:1.5    1 port.cc:153] oneDNN custom ops\n")
            captured.keep_all = True  # what the loader does when the import raises
    finally:
        assert captured is not None
    assert "oneDNN" in capfd.readouterr().err


def test_verbose_travels_to_child_processes_and_quiet_is_the_default():
    probe = ("import os, logging, pipeline; "
             "print(os.environ['TF_CPP_MIN_LOG_LEVEL'], logging.getLogger('tensorflow').level)")
    quiet = subprocess.run([sys.executable, "-c", probe], env=CLEAN_ENV, capture_output=True,
                           text=True, cwd=ROOT)
    loud = subprocess.run([sys.executable, "-c", probe], env={**CLEAN_ENV, logs.VERBOSE_ENV: "1"},
                          capture_output=True, text=True, cwd=ROOT)
    assert quiet.stdout.split() == ["2", "30"]  # C++ INFO and WARNING hidden; Python WARNING
    assert loud.stdout.split() == ["0", "0"]


def test_a_users_own_tf_cpp_level_wins(tmp_path):
    probe = "import os, pipeline; print(os.environ['TF_CPP_MIN_LOG_LEVEL'])"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            env={**CLEAN_ENV, "TF_CPP_MIN_LOG_LEVEL": "3"}, cwd=ROOT)
    assert result.stdout.strip() == "3"


def test_tensorflow_deprecation_notices_are_dropped_unless_verbose(caplog, monkeypatch):
    import logging

    monkeypatch.delenv(logs.VERBOSE_ENV, raising=False)
    logs.apply()
    tf_logger = logging.getLogger("tensorflow")
    notice = "From %s: %s (from %s) is deprecated.\nInstructions for updating:\n%s"
    with caplog.at_level(logging.WARNING, logger="tensorflow"):
        tf_logger.warning(notice, "a.py:1", "f", "tf", "use g")
        tf_logger.warning("a real warning")
        monkeypatch.setenv(logs.VERBOSE_ENV, "1")
        tf_logger.warning(notice, "a.py:1", "f", "tf", "use g")
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "a real warning"
    assert len(messages) == 2 and "Instructions for updating" in messages[1]


def test_the_export_and_input_notes_of_tensorflow_are_dropped_unless_verbose(caplog,
                                                                             monkeypatch):
    """What a default export printed 48 times (the SavedModel's notes on the OD API's layers)."""
    import logging

    monkeypatch.delenv(logs.VERBOSE_ENV, raising=False)
    logs.apply()
    tf_logger = logging.getLogger("tensorflow")
    notes = ["Skipping full serialization of TF-Keras layer <Lambda>, because it is not built.",
             "Model's `__init__()` arguments contain non-serializable objects. Please ...",
             "num_readers has been reduced to 1 to match input file shards."]
    with caplog.at_level(logging.WARNING, logger="tensorflow"):
        for note in notes:
            tf_logger.warning(note)
        monkeypatch.setenv(logs.VERBOSE_ENV, "1")
        tf_logger.warning(notes[0])
    assert [r.getMessage() for r in caplog.records] == [notes[0]]


def test_stack_prints_are_hidden_unless_verbose(capsys, monkeypatch):
    monkeypatch.delenv(logs.VERBOSE_ENV, raising=False)
    with logs.stack_prints():
        print("creating index...")  # as pycocotools does during the OD API's evaluation
    monkeypatch.setenv(logs.VERBOSE_ENV, "1")
    with logs.stack_prints():
        print("index created!")
    assert capsys.readouterr().out == "index created!\n"
