"""Reading YAML safely and building validated dataclasses from it (params.yaml, models.yaml, locks).

The rules for a field (range, choices) live in its dataclass ``metadata`` so that the error
message can name the key and the values it allows. Unknown keys are errors, never ignored.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.core.errors import ParamsError


#: Largest params file read (params.yaml is about 7 KB). The check comes before parsing, so a
#: huge file costs no time or memory; pure-Python YAML parses this much in well under a second.
MAX_YAML_BYTES = 256 * 1024
#: Deepest nesting of mappings and lists (params.yaml has 3 levels): the YAML composer recurses.
MAX_YAML_DEPTH = 32


def read_yaml(path: Path, what: str) -> Any:
    """The parsed YAML file (``{}`` when empty); ParamsError naming ``what`` if it is missing,
    too large, not valid YAML, or uses aliases, duplicate keys or absurd nesting."""
    if not path.is_file():
        raise ParamsError(f"{what} not found: {path}")
    size = path.stat().st_size
    if size > MAX_YAML_BYTES:
        raise ParamsError(f"{path} is {size} bytes; a {what} may have at most {MAX_YAML_BYTES}")
    try:
        return yaml.load(path.read_bytes().decode("utf-8"), Loader=_StrictLoader) or {}
    except UnicodeDecodeError as err:
        raise ParamsError(f"{path} is not UTF-8 text: {err}") from None
    except _Refused as err:
        raise ParamsError(f"{path}:{err.mark.line + 1}: {err}") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{path} is not valid YAML: {' '.join(str(err).split())}") from err


class _Refused(yaml.YAMLError):
    """Valid YAML that params files must not use; ``mark`` says where."""

    def __init__(self, message: str, mark: yaml.Mark):
        super().__init__(message)
        self.mark = mark


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader refusing what no params file needs and a hostile one uses: aliases (their
    expansion, "billion laughs", blows up whoever walks the data, DVC included), duplicate keys
    (the last silently wins) and nesting deep enough to exhaust the recursion limit."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise _Refused("YAML aliases (*name) are not allowed in params files; "
                           "write the value out", self.peek_event().start_mark)
        if self._depth >= MAX_YAML_DEPTH:
            raise _Refused(f"nested deeper than {MAX_YAML_DEPTH} levels",
                           self.peek_event().start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                if key in first_line:
                    raise _Refused(f"duplicate key {key!r} (first at line {first_line[key]})",
                                   key_node.start_mark)
            except TypeError:  # unhashable: SafeLoader reports it below
                continue
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def build_dataclass(cls: type, raw: Any, prefix: str) -> Any:
    """Build and validate any params-style dataclass (e.g. configs/models.yaml entries)."""
    return _build(cls, raw, prefix)


def _build(cls: type, raw: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "params.yaml"
    if not isinstance(raw, dict):
        raise ParamsError(f"{where} must be a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ParamsError(
            f"unknown key(s) {[prefix + str(k) for k in unknown]} in {where}; "
            f"allowed: {sorted(fields)}"
        )
    missing = sorted(name for name, f in fields.items() if name not in raw
                     and f.default is dataclasses.MISSING
                     and f.default_factory is dataclasses.MISSING)
    if missing:
        raise ParamsError(f"missing key(s) {[prefix + k for k in missing]} in {where}")
    hints = typing.get_type_hints(cls)
    values = {
        name: _convert(prefix + name, raw[name], hints[name], fields[name].metadata)
        for name in fields
        if name in raw
    }
    obj = cls(**values)
    if hasattr(obj, "check"):
        obj.check()
    return obj


def _convert(key: str, value: Any, tp: Any, meta: Any) -> Any:
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, prefix=key + ".")
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ParamsError(f"{key} must be one of {list(choices)}, got {value!r}")
        return value
    if origin is tuple:
        return _convert_list(key, value, typing.get_args(tp)[0])
    return _check_range(key, _convert_scalar(key, value, tp), meta)


def _convert_list(key: str, value: Any, item_type: type) -> tuple:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ParamsError(f"{key} must be a list of {item_type.__name__}, got {value!r}")
    return tuple(_convert_scalar(f"{key}[{i}]", v, item_type) for i, v in enumerate(value))


def _convert_scalar(key: str, value: Any, tp: type) -> Any:
    # bool is a subclass of int in Python: refuse True where a number is expected.
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return _finite(key, value)
    if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise ParamsError(f"{key} must be of type {tp.__name__}, got {value!r} ({type(value).__name__})")


def _finite(key: str, value: int | float) -> float:
    # NaN fails every comparison, so it would pass any range check: refuse it (and infinities,
    # and integers too large for a float) here, where every float param goes through.
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ParamsError(f"{key} must be a finite number, got {value!r}")
    return number


def _check_range(key: str, value: Any, meta: Any) -> Any:
    low, high = meta.get("min"), meta.get("max")
    # Written so that a value that cannot be compared (NaN) is out of range, never in it.
    if (low is not None and not value >= low) or (high is not None and not value <= high):
        bounds = f"[{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
        raise ParamsError(f"{key} must be in {bounds}, got {value!r}")
    return value
