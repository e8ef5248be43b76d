"""What a run prints: the project's own lines by default, the whole stack's with ``--verbose``.

TensorFlow, absl, Beam and MLflow log hundreds of INFO lines per stage (CPU features, oneDNN,
CUDA probing, worker start-up, deprecation notes) that say nothing to a user. By default they are
cut at WARNING (TensorFlow's C++ log at level 2: warnings and errors of C++ code are dropped too,
for example the CUDA plug-in registration errors printed on every CPU-only machine).
TensorFlow's C++ code also prints a few lines at import, before its log level is read (absl's
"All log messages before absl::InitializeLog()" warning, oneDNN, CUDA probing): while
``tensorflow`` is imported, the process's stderr goes to a temporary file, and every line of it
but these known ones is written back (:class:`QuietTensorflowImport`).
``--verbose`` or ``ODP_VERBOSE=1`` shows everything. The setting travels to the processes a stage
starts (Beam workers, DVC's stage commands) through the environment, and is applied when the
``pipeline`` package is imported, before TensorFlow is.
"""
from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import io
import logging
import os
import re
import sys
import tempfile
import warnings
from typing import Iterator

VERBOSE_ENV = "ODP_VERBOSE"
TF_CPP_LEVEL_ENV = "TF_CPP_MIN_LOG_LEVEL"
#: The stack's Python loggers, cut at WARNING unless verbose.
STACK_LOGGERS = ("tensorflow", "absl", "apache_beam", "mlflow", "alembic", "matplotlib",
                 "h5py", "PIL", "urllib3", "numexpr", "dask", "distributed")
#: Packages whose Python warnings (deprecations of their own dependencies) are hidden by default.
STACK_WARNING_MODULES = r"(tensorflow|tf_keras|keras|object_detection|official|tf_slim|"
STACK_WARNING_MODULES += r"apache_beam|mlflow|google|absl|pycocotools|dask|distributed)(\.|$)"

#: Lines TensorFlow's native code prints at import whatever the log level (a CPU-only machine).
IMPORT_NOISE = re.compile(
    r"(WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|^[IW]\d{4} [\d:. ]+\d+ (port|cudart_stub|cpu_feature_guard|cuda_\w+|gpu_device)\.cc:\d+\]"
    r"|^To enable the following instructions: .* rebuild TensorFlow)")
#: Records the TF_CPP_MIN_LOG_LEVEL this module set, so that a child process (which inherits it)
#: does not take it for the user's own setting.
_OURS_ENV = "ODP_TF_CPP_MIN_LOG_LEVEL"
# The user's own TF_CPP_MIN_LOG_LEVEL, if any, always wins.
_USER_TF_CPP_LEVEL = (os.environ.get(TF_CPP_LEVEL_ENV)
                      if os.environ.get(TF_CPP_LEVEL_ENV) != os.environ.get(_OURS_ENV) else None)


def verbose() -> bool:
    """Whether the stack's own log lines are shown (``ODP_VERBOSE`` is 1, true or yes)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes")


def set_verbose(flag: bool) -> None:
    """Show (or hide) the stack's log lines in this process and the processes it starts."""
    if flag:
        os.environ[VERBOSE_ENV] = "1"
    apply()


#: WARNINGs TensorFlow logs on every run about the OD API's own code, which the user cannot act
#: on: deprecation notices ("... is deprecated ... Instructions for updating:"), the SavedModel
#: export's notes on the OD API's Keras layers, and the input reader's shard count.
UNACTIONABLE_TF_WARNINGS = ("Instructions for updating",
                            "Skipping full serialization of TF-Keras layer",
                            "arguments contain non-serializable objects",
                            "num_readers has been reduced to")


class _TensorflowDeprecations(logging.Filter):
    """Drops :data:`UNACTIONABLE_TF_WARNINGS` unless verbose."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return verbose() or not any(text in message for text in UNACTIONABLE_TF_WARNINGS)


_DEPRECATIONS = _TensorflowDeprecations()


@contextlib.contextmanager
def stack_prints() -> Iterator[None]:
    """Hide what the stack prints to stdout itself (pycocotools' progress and summary table
    during the OD API's evaluation) unless verbose."""
    if verbose():
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def apply() -> None:
    """Apply the current setting to TensorFlow's C++ log, Python loggers and warnings."""
    loud = verbose()
    if _USER_TF_CPP_LEVEL is None:
        os.environ[TF_CPP_LEVEL_ENV] = os.environ[_OURS_ENV] = "0" if loud else "2"
    level = logging.NOTSET if loud else logging.WARNING
    for name in STACK_LOGGERS:
        logging.getLogger(name).setLevel(level)
    tf_logger = logging.getLogger("tensorflow")
    if _DEPRECATIONS not in tf_logger.filters:
        tf_logger.addFilter(_DEPRECATIONS)
    if loud:
        return
    warnings.filterwarnings("ignore", module=STACK_WARNING_MODULES)
    try:  # absl's own verbosity also gates the OD API's INFO lines written through absl
        from absl import logging as absl_logging
    except ImportError:
        return
    absl_logging.set_verbosity(absl_logging.WARNING)


class QuietTensorflowImport(importlib.abc.MetaPathFinder):
    """Imports ``tensorflow`` with fd 2 captured; the lines that are not known import noise
    (:data:`IMPORT_NOISE`) are written back to stderr, all of them if the import fails."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "tensorflow" or verbose():
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        with _captured_stderr() as captured:
            try:
                self._loader.exec_module(module)
            except BaseException:
                captured.keep_all = True
                raise


class _Captured:
    keep_all = False


@contextlib.contextmanager
def _captured_stderr() -> Iterator[_Captured]:
    captured = _Captured()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as buffer:
        os.dup2(buffer.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            buffer.seek(0)
            lines = buffer.read().decode("utf-8", "replace").splitlines(keepends=True)
            kept = lines if captured.keep_all else [ln for ln in lines if not IMPORT_NOISE.search(ln)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()


def install_quiet_tensorflow_import() -> None:
    """Filter TensorFlow's import-time native log lines in this process (idempotent)."""
    if "tensorflow" not in sys.modules and not any(
            isinstance(f, QuietTensorflowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, QuietTensorflowImport())
