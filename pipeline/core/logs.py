"""What a run prints: the project's own lines by default, the whole stack's with ``--verbose``.

TensorFlow, absl, Beam and MLflow log hundreds of INFO lines per stage (CPU features, oneDNN,
CUDA probing, worker start-up, deprecation notes) that say nothing to a user. By default they are
cut at WARNING (TensorFlow's C++ log at level 2: warnings and errors of C++ code are dropped too,
for example the CUDA plug-in registration errors printed on every CPU-only machine).
``--verbose`` or ``ODP_VERBOSE=1`` shows everything. The setting travels to the processes a stage
starts (Beam workers, DVC's stage commands) through the environment, and is applied when the
``pipeline`` package is imported, before TensorFlow is.
"""
from __future__ import annotations

import logging
import os
import warnings

VERBOSE_ENV = "ODP_VERBOSE"
TF_CPP_LEVEL_ENV = "TF_CPP_MIN_LOG_LEVEL"
#: The stack's Python loggers, cut at WARNING unless verbose.
STACK_LOGGERS = ("tensorflow", "absl", "apache_beam", "mlflow", "alembic", "matplotlib",
                 "h5py", "PIL", "urllib3", "numexpr", "dask", "distributed")
#: Packages whose Python warnings (deprecations of their own dependencies) are hidden by default.
STACK_WARNING_MODULES = r"(tensorflow|tf_keras|keras|object_detection|official|tf_slim|"
STACK_WARNING_MODULES += r"apache_beam|mlflow|google|absl|pycocotools|dask|distributed)(\.|$)"

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


def apply() -> None:
    """Apply the current setting to TensorFlow's C++ log, Python loggers and warnings."""
    loud = verbose()
    if _USER_TF_CPP_LEVEL is None:
        os.environ[TF_CPP_LEVEL_ENV] = os.environ[_OURS_ENV] = "0" if loud else "2"
    level = logging.NOTSET if loud else logging.WARNING
    for name in STACK_LOGGERS:
        logging.getLogger(name).setLevel(level)
    if loud:
        return
    warnings.filterwarnings("ignore", module=STACK_WARNING_MODULES)
    try:  # absl's own verbosity also gates the OD API's INFO lines written through absl
        from absl import logging as absl_logging
    except ImportError:
        return
    absl_logging.set_verbosity(absl_logging.WARNING)
