"""The one place that hides secrets before anything is logged, printed or recorded.

Two kinds of secrets are recognised: the credentials of a URI (``http://user:pass@host`` ->
``http://***@host``) and the value of any option or ``name=value`` pair whose name contains
key, secret, token, password or credential (``--aws_secret_access_key=abc`` ->
``--aws_secret_access_key=***``; in an argument list, ``["--api-token", "abc"]`` ->
``["--api-token", "***"]``). :func:`redact` is used for MLflow params and tags, tracking URIs
in messages and errors, and (through :class:`RedactingFilter`) every log line of the CLI.
"""
from __future__ import annotations

import logging
import re
from typing import Any

MASK = "***"
_URI_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@'\"]+@")
_SECRET_NAME = re.compile(
    r"(?i)(secret|token|passw|credential|(?:^|[_.-])(?:api)?keys?(?:$|[_.-]))")
_VALUE = r"([^\s,;&'\"\]\)]+)"
#: ``name=value`` (options, query strings, settings)
_NAME_VALUE = re.compile(r"([A-Za-z0-9_.-]+)(\s*=\s*)" + _VALUE)
#: ``--name value`` on a command line, or ``'--name', 'value'`` in a printed argument list
_OPTION_VALUE = re.compile(r"(--?[A-Za-z0-9_.-]+)(['\"]?,\s*['\"]|\s+)(?!-)" + _VALUE)


def is_secret_name(name: str) -> bool:
    """Whether an option or field named ``name`` holds a secret (``--aws_secret_access_key``)."""
    return bool(_SECRET_NAME.search(name.lstrip("-")))


def redact(value: Any) -> Any:
    """``value`` (a string, or a list/tuple/dict of them) with every secret replaced by ``***``."""
    if isinstance(value, str):
        return _redact_text(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_redact_args(list(value)))
    if isinstance(value, dict):
        return {key: redact(item) for key, item in value.items()}
    return value


def _redact_text(text: str) -> str:
    text = _URI_CREDENTIALS.sub(lambda m: f"{m.group(1)}{MASK}@", text)
    for pattern in (_NAME_VALUE, _OPTION_VALUE):
        text = pattern.sub(_mask_secret_value, text)
    return text


def _mask_secret_value(match: re.Match) -> str:
    name, separator, _ = match.groups()
    return f"{name}{separator}{MASK}" if is_secret_name(name) else match.group(0)


def _redact_args(args: list) -> list:
    redacted, hide_next = [], False
    for arg in args:
        if hide_next and isinstance(arg, str) and not arg.startswith("-"):
            redacted.append(MASK)
        else:
            redacted.append(redact(arg))
        # "--password value": the value is the next argument
        hide_next = (isinstance(arg, str) and arg.startswith("-") and "=" not in arg
                     and is_secret_name(arg))
    return redacted


def join_secret_values(args: list[str]) -> list[str]:
    """``["--api_token", "abc"]`` -> ``["--api_token=abc"]`` for secret options only.

    Same meaning to argparse-style parsers, but a library that logs an argument alone
    ("Unparseable argument: abc") then logs the name with it, so the value gets redacted.
    """
    joined: list[str] = []
    for arg in args:
        previous = joined[-1] if joined else ""
        if (not arg.startswith("-") and previous.startswith("-") and "=" not in previous
                and is_secret_name(previous)):
            joined[-1] = f"{previous}={arg}"
        else:
            joined.append(arg)
    return joined


class RedactingFilter(logging.Filter):
    """A logging filter that redacts the formatted message of every record it sees."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string is logging's to report
            return True
        clean = _redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def install_log_filter() -> None:
    """Redact every line that reaches the root logger's handlers (call after logging setup)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
