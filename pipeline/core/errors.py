"""Errors the CLI reports as a one-line message instead of a traceback."""


class PipelineError(RuntimeError):
    """A stage cannot go on; the message says why and what to do."""


class ParamsError(ValueError):
    """A parameter is unknown, of the wrong type or out of range."""
