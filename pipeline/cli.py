"""Command line: ``odp <stage> [--params params.yaml] [--verbose] [stage options]``
(``python -m pipeline`` is the same).

A thin layer: it validates params.yaml (so bad params stop the run before any work), imports
only the chosen stage's module, and turns the project's known errors into one-line messages.
Each stage module defines ``add_arguments(parser)`` and ``run(args, params)``.
"""
from __future__ import annotations

import argparse
import atexit
import importlib
import logging
import os
import sys
import threading
from typing import NoReturn

from pipeline.core import layout
from pipeline.core import logs, redaction
from pipeline.core.errors import PipelineError

#: stage name -> (module, one-line help)
STAGES = {
    "sample": ("pipeline.stages.sample", "generate the built-in synthetic VOC dataset"),
    "pretrained": ("pipeline.stages.pretrained", "the checkpoint to fine-tune from, in the project"),
    "convert": ("pipeline.stages.convert", "convert a VOC, COCO or YOLO dataset to sharded TFRecords (Beam)"),
    "configure": ("pipeline.stages.configure", "render pipeline.config from a template and params"),
    "train": ("pipeline.stages.train", "train with the OD API's model_main_tf2"),
    "export": ("pipeline.stages.export", "export a SavedModel, verify it against the checkpoint, TFLite"),
    "report": ("pipeline.stages.report", "test-set metrics, plots, HTML report; register the model"),
    "predict": ("pipeline.stages.predict", "run an exported model on images, folders and videos"),
    "sync-mlflow": ("pipeline.stages.sync_mlflow", "send MLflow records a training kept locally"),
    "check-params": ("pipeline.stages.check_params", "validate the params file (run before dvc repro)"),
    "compare": ("pipeline.stages.compare",
                "experiments side by side: key params and test mAP (from dvc exp show)"),
}
#: Stages that need no params file (usable outside a project): without --params, the defaults.
WITHOUT_PARAMS = {"predict", "compare"}
VERBOSE_FLAGS = ("--verbose", "-v")


def program_name() -> str:
    """``odp`` when started through the console script, else ``python -m pipeline``."""
    return "odp" if os.path.basename(sys.argv[0]) == "odp" else "python -m pipeline"


def build_parser(stage: str | None) -> argparse.ArgumentParser:
    """The parser of every stage; only ``stage``'s module is imported (for its options)."""
    parser = argparse.ArgumentParser(
        prog=program_name(),
        description="Train custom object detectors with the TF2 Object Detection API.")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, (module_name, help_text) in STAGES.items():
        stage_parser = sub.add_parser(name, help=help_text, description=help_text)
        stage_parser.add_argument(
            "--params", default=None if name in WITHOUT_PARAMS else layout.PARAMS_FILE,
            help="params file (default: none, the defaults)" if name in WITHOUT_PARAMS
            else f"params file (default: {layout.PARAMS_FILE})")
        stage_parser.add_argument(
            *VERBOSE_FLAGS, action="store_true",
            help=f"also show TensorFlow's, Beam's and MLflow's log lines ({logs.VERBOSE_ENV}=1)")
        if name == stage:  # import only the module of the stage being run
            importlib.import_module(module_name).add_arguments(stage_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Here, not at the top: this module imports only the standard library and the project, so
    # that a missing third-party package (pydantic, ...) gets console_main's one-line error.
    from pipeline.core.params import ParamsError, load_params, params_from_dict

    argv = sys.argv[1:] if argv is None else argv
    stage = next((a for a in argv if a in STAGES), None)
    if any(flag in argv for flag in VERBOSE_FLAGS):
        logs.set_verbose(True)  # before the stage's module (and TensorFlow) is imported
    args = build_parser(stage).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        force=True)  # Beam adds a root handler at import
    logs.apply()  # again: imports may have reset the stack's loggers
    redaction.install_log_filter()  # no credentials in any log line
    params_file = args.params
    try:
        params = load_params(params_file) if params_file else params_from_dict({})
        importlib.import_module(STAGES[args.stage][0]).run(args, params)
    except ParamsError as err:
        print(f"error: bad params ({params_file}): {err}", file=sys.stderr)
        return 2
    except PipelineError as err:
        print(f"error: {args.stage}: {err}", file=sys.stderr)
        return 1
    return 0


def console_main() -> NoReturn:
    """The entry point of ``odp`` and ``python -m pipeline``: :func:`main`, then
    :func:`exit_without_teardown`."""
    try:
        code = main()
    except ModuleNotFoundError as err:
        if not err.name or err.name.split(".")[0] == "pipeline":
            raise  # the project's own module: a bug, its traceback helps
        print(missing_package_message(err.name), file=sys.stderr)
        code = 2
    exit_without_teardown(code)


def missing_package_message(module: str) -> str:
    """The one line shown when a stage needs a package this Python does not have: run by
    another Python than the project's environment, or an environment not set up."""
    return (f"error: this Python ({sys.executable}) has no module {module!r}, which the "
            f"project needs: run it from the project's environment (`make setup` creates "
            f"`.venv`; then `. .venv/bin/activate`)")


def exit_without_teardown(code: int) -> NoReturn:
    """End the process as a normal exit does, minus the interpreter's teardown of its modules.

    Python's teardown of Beam's and MLflow's modules (gRPC, pyarrow, SQLAlchemy: C code, no
    Python frame) costs 1-2 s at the exit of every stage process (measured on a busy machine:
    0.8 s after importing Beam alone, 2.1 s after an MLflow run; 1.1 s at the end of a quiet
    20,000-image conversion), and writes nothing: the stage's files are
    closed and its MLflow run ended by then. So this does what ``sys.exit`` does first (join the
    non-daemon threads, run the atexit handlers: MLflow's, multiprocessing's, logging's flush),
    flushes stdout and stderr and ends the process. Not when TensorFlow is loaded: its file
    writers (TF event files) flush when their objects are destroyed, so those stages exit
    normally.
    """
    if "tensorflow" in sys.modules:
        sys.exit(code)
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()  # private, but what Py_Finalize itself calls, in every CPython 3
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)
