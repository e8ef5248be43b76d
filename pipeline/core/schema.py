"""Reading YAML safely and validating it with pydantic (params.yaml, models.yaml, locks).

The files are read by a strict YAML loader (no aliases, no duplicate keys, bounded size and
depth). Their models are pydantic dataclasses (:data:`record`): the rules of a field (type,
range, choices) are declared beside it (``Field(ge=..., le=...)``, ``Literal``, the types
below), and :func:`validate` turns pydantic's errors into one line naming the key, the value
and what is allowed. Unknown keys are errors, never ignored, with a did-you-mean.
"""
from __future__ import annotations

import difflib
import functools
import math
import re
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any

import annotated_types
import yaml
from pydantic import AfterValidator, BeforeValidator, ConfigDict, Strict, StrictStr, TypeAdapter
from pydantic import ValidationError
from pydantic.dataclasses import dataclass
from pydantic_core import PydanticCustomError

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


# --- models and field types --------------------------------------------------------------------


def record(cls: type) -> type:
    """``cls`` as a frozen pydantic dataclass refusing unknown keys, its defaults validated too
    (model.name and data.root depend on files and the working folder). A dataclass rather than
    a BaseModel so that ``dataclasses.asdict``/``replace`` keep working on params. Building one
    in code with a bad value (``replace(params.data, root=...)``) raises a one-line
    ParamsError, as loading does, not pydantic's multi-line report."""
    cls = dataclass(cls, frozen=True, config=ConfigDict(extra="forbid", validate_default=True))
    validating_init = cls.__init__

    @functools.wraps(validating_init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        try:
            validating_init(self, *args, **kwargs)
        except ValidationError as err:
            raise ParamsError(_first_problem(cls, err.errors(), f"{cls.__name__}.")) from None

    cls.__init__ = __init__
    return cls


def invalid(message: str) -> PydanticCustomError:
    """The error a field validator raises; :func:`validate` prefixes the key to ``message``."""
    return PydanticCustomError("param_value", "{message}", {"message": message})


def _as_float(value: Any) -> Any:
    """A float field's input as a float: ints, and strings that parse as a number (YAML 1.1
    reads ``1e-3`` as a string where DVC reads a number). Other values are left for the type
    check to refuse (bool too). NaN and infinities are refused here: NaN passes no range check
    and fails none."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return value
    try:
        number = float(value)
    except ValueError:  # a string that is not a number
        return value
    except OverflowError:  # an integer too large for a float
        number = math.inf
    if not math.isfinite(number):
        raise PydanticCustomError("finite_number", "must be a finite number")
    return number


def _list_as_tuple(value: Any) -> Any:
    """A YAML list (or null: empty) as a tuple; anything else left for the type check."""
    if value is None:
        return ()
    return tuple(value) if isinstance(value, list) else value


#: A finite float; an int or a numeric string is accepted (as DVC does), a bool is not.
FiniteFloat = Annotated[float, Strict(), BeforeValidator(_as_float)]
#: A YAML list of strings (null = empty), stored as a tuple.
Names = Annotated[tuple[StrictStr, ...], Strict(), BeforeValidator(_list_as_tuple)]

SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")


def _sha256(value: str) -> str:
    if not SHA256_PATTERN.match(value):
        raise invalid(f"must be 64 lowercase hex digits, got {value!r}")
    return value


def _sha256_or_empty(value: str) -> str:
    if value and not SHA256_PATTERN.match(value):
        raise invalid(f"must be '' or 64 lowercase hex digits, got {value!r}")
    return value


Sha256 = Annotated[StrictStr, AfterValidator(_sha256)]
#: A sha256 or '' (none pinned).
OptionalSha256 = Annotated[StrictStr, AfterValidator(_sha256_or_empty)]


def members_of(choices: Sequence[str], noun: str = "name") -> AfterValidator:
    """For a list field: every item must be one of ``choices`` (the error names the others)."""
    def check(values: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(values) - set(choices))
        if unknown:
            raise invalid(f"has unknown {noun}(s) {unknown}; allowed: {list(choices)}")
        return values
    return AfterValidator(check)


# --- validation with one-line messages ---------------------------------------------------------


def validate(cls: type, raw: Any, prefix: str = "") -> Any:
    """``raw`` (a mapping parsed from YAML) as a validated ``cls``; otherwise a ParamsError in
    one line naming the key (``prefix`` + its path), the value and what is allowed."""
    where = prefix.rstrip(".") or "params.yaml"
    if not isinstance(raw, dict):
        raise ParamsError(f"{where} must be a mapping, got {type(raw).__name__}")
    try:
        return _adapter(cls).validate_python(raw)
    except ValidationError as err:
        raise ParamsError(_first_problem(cls, err.errors(), prefix)) from None


@functools.lru_cache(maxsize=None)
def _adapter(cls: type) -> TypeAdapter:
    return TypeAdapter(cls)


_UNKNOWN = ("unexpected_keyword_argument", "extra_forbidden", "invalid_key")  # the last: 1: x
_MISSING = ("missing_argument", "missing")
_TYPES = {"int_type": "int", "float_type": "float", "string_type": "str", "bool_type": "bool"}
_BOUNDS = ("greater_than_equal", "less_than_equal", "greater_than", "less_than")


def _first_problem(cls: type, errors: list[dict], prefix: str) -> str:
    """Unknown keys first (a typo explains the rest), then missing keys, then the first error."""
    for kinds, message in ((_UNKNOWN, _unknown_keys), (_MISSING, _missing_keys)):
        found = [e["loc"] for e in errors if e["type"] in kinds]
        if found:
            parent = found[0][:-1]
            names = [str(loc[-1]) for loc in found if loc[:-1] == parent]
            return message(cls, parent, names, prefix)
    return _describe(cls, errors[0], prefix)


def _unknown_keys(cls: type, parent: tuple, names: list, prefix: str) -> str:
    allowed = sorted(_fields(_class_at(cls, parent)))
    keys = [_key(prefix, (*parent, name)) for name in names]
    message = (f"unknown key(s) {keys} in {_key(prefix, parent) or 'params.yaml'}; "
               f"allowed: {allowed}")
    guesses = {_key(prefix, (*parent, name)): _key(prefix, (*parent, guess))
               for name, guess in did_you_mean(names, allowed).items()}
    if len(keys) == 1 and guesses:
        message += f"; did you mean {guesses[keys[0]]!r}?"
    elif guesses:
        message += "; did you mean " + ", ".join(
            f"{guess!r} for {key!r}" for key, guess in guesses.items()) + "?"
    return message


def _missing_keys(cls: type, parent: tuple, names: list, prefix: str) -> str:
    keys = [_key(prefix, (*parent, name)) for name in names]
    return f"missing key(s) {keys} in {_key(prefix, parent) or 'params.yaml'}"


def did_you_mean(unknown: Iterable[str], allowed: Iterable[str]) -> dict[str, str]:
    """``{unknown name: the allowed name it most likely meant}`` (difflib close matches,
    ignoring case); names with no close match are left out."""
    by_lower = {name.lower(): name for name in allowed}
    guesses = {}
    for name in unknown:
        match = difflib.get_close_matches(name.lower(), list(by_lower), n=1)
        if match:
            guesses[name] = by_lower[match[0]]
    return guesses


def _describe(cls: type, error: dict, prefix: str) -> str:
    kind, loc, value = error["type"], error["loc"], error["input"]
    key = _key(prefix, loc)
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, ParamsError):  # a model's cross-field check: its message is complete
        return str(cause)
    if kind == "param_value":
        return f"{key} {error['msg']}"
    if kind in _TYPES:
        return f"{key} must be of type {_TYPES[kind]}, got {value!r} ({type(value).__name__})"
    if kind == "finite_number":
        return f"{key} must be a finite number, got {value!r}"
    if kind in ("tuple_type", "list_type"):
        item = _item_type(_field_at(cls, loc).annotation)
        return f"{key} must be a list of {item}, got {value!r}"
    if kind in ("dataclass_type", "model_type", "dict_type"):
        return f"{key} must be a mapping, got {type(value).__name__}"
    if kind in _BOUNDS:
        low, high = _bounds(_field_at(cls, loc).metadata)
        return f"{key} must be in [{low}, {high}], got {value!r}"
    if kind == "literal_error":
        choices = list(typing.get_args(_field_at(cls, loc).annotation))
        return f"{key} must be one of {choices}, got {value!r}"
    return f"{key}: {error['msg']}, got {value!r}"


def _key(prefix: str, loc: tuple) -> str:
    """``prefix`` and a pydantic location as a params key: ``train.augmentations[2]``."""
    key = prefix.rstrip(".")
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else f"{'.' if key else ''}{part}"
    return key


def _fields(cls: type) -> dict:
    return cls.__pydantic_fields__


def _class_at(cls: type, loc: tuple) -> type:
    for name in loc:
        cls = _fields(cls)[name].annotation
    return cls


def _field_at(cls: type, loc: tuple):
    """The FieldInfo of the field at ``loc`` (list indices at the end ignored)."""
    names = [part for part in loc if not isinstance(part, int)]
    return _fields(_class_at(cls, tuple(names[:-1])))[names[-1]]


def _item_type(annotation: Any) -> str:
    item = typing.get_args(annotation)[0]
    if typing.get_origin(item) is Annotated:
        item = typing.get_args(item)[0]
    return item.__name__


def _bounds(metadata: list) -> tuple[Any, Any]:
    """The (low, high) range a field declares with ``Field(ge=..., le=...)``."""
    low = next((m.ge for m in metadata if isinstance(m, annotated_types.Ge)), "-inf")
    high = next((m.le for m in metadata if isinstance(m, annotated_types.Le)), "inf")
    return low, high
