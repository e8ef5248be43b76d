"""The strict YAML reader and the one-line messages made from pydantic's errors."""
import re
import time
from pathlib import Path
from typing import Literal

import pytest
from pydantic import Field, StrictInt

from pipeline.core.errors import ParamsError
from pipeline.core.params import load_params
from pipeline.core.schema import Names, did_you_mean, record, validate


# --- params files built to hurt (issue 13, 7) --------------------------------------------------

BILLION_LAUGHS = "\n".join(
    ['train:', '  a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"  {b}: &{b} [{', '.join(['*' + a] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi")]
    + ["  augmentations: *i", ""])


def _refused_quickly(path: Path, seconds: float = 0.5) -> str:
    start = time.perf_counter()
    with pytest.raises(ParamsError) as err:
        load_params(path)
    assert time.perf_counter() - start < seconds
    assert "\n" not in str(err.value)
    return str(err.value)


def test_billion_laughs_is_refused_quickly(tmp_path):
    (tmp_path / "p.yaml").write_text(BILLION_LAUGHS)
    message = _refused_quickly(tmp_path / "p.yaml")
    assert message == (f"{tmp_path / 'p.yaml'}:3: YAML aliases (*name) are not allowed in "
                       "params files; write the value out")


def test_duplicate_keys_are_refused_with_the_key_and_line(tmp_path):
    (tmp_path / "p.yaml").write_text("train:\n  batch_size: 4\n  num_steps: 9\n  batch_size: 8\n")
    message = _refused_quickly(tmp_path / "p.yaml")
    assert message == f"{tmp_path / 'p.yaml'}:4: duplicate key 'batch_size' (first at line 2)"
    (tmp_path / "p.yaml").write_text("train: {}\nsample: {}\ntrain: {}\n")
    assert "duplicate key 'train' (first at line 1)" in _refused_quickly(tmp_path / "p.yaml")


def test_a_50_mb_document_is_refused_before_it_is_read(tmp_path):
    line = "  - " + "x" * 75 + "\n"
    (tmp_path / "p.yaml").write_text("train:\n  augmentations:\n" + line * (50_000_000 // 80))
    message = _refused_quickly(tmp_path / "p.yaml")
    assert re.fullmatch(r".*p\.yaml is 500000\d\d bytes; a params file may have at most 262144",
                        message)


def test_deep_nesting_is_refused_not_a_recursion_error(tmp_path):
    (tmp_path / "p.yaml").write_text("train: " + "[" * 100_000 + "]" * 100_000 + "\n")
    # ~0.4 s whatever the depth: PyYAML's scanner looks 1024 characters ahead for keys
    assert "nested deeper than 32 levels" in _refused_quickly(tmp_path / "p.yaml", seconds=3)


def test_a_binary_file_is_refused_with_a_clear_message(tmp_path):
    (tmp_path / "p.yaml").write_bytes(b"train:\n  batch_size: \xff\xfe\n")
    assert "is not UTF-8 text" in _refused_quickly(tmp_path / "p.yaml")


# --- messages ----------------------------------------------------------------------------------

@record
class Inner:
    count: StrictInt = Field(1, ge=1, le=9)
    kind: Literal["a", "b"] = "a"


@record
class Outer:
    name: str
    inner: Inner = Field(default_factory=Inner)
    tags: Names = ()


@pytest.mark.parametrize("raw, message", [
    ({}, "missing key(s) ['x.name'] in x"),
    ({"name": "n", "inner": {"count": 10}}, "x.inner.count must be in [1, 9], got 10"),
    ({"name": "n", "inner": {"kind": "c"}}, "x.inner.kind must be one of ['a', 'b'], got 'c'"),
    ({"name": "n", "inner": 3}, "x.inner must be a mapping, got int"),
    ({"name": "n", "tags": ["t", 2]}, "x.tags[1] must be of type str, got 2 (int)"),
    ({"name": "n", "tags": "t"}, "x.tags must be a list of str, got 't'"),
    ({"name": "n", "inner": {"Count": 2}},
     "unknown key(s) ['x.inner.Count'] in x.inner; allowed: ['count', 'kind']; "
     "did you mean 'x.inner.count'?"),
    ("n", "x must be a mapping, got str"),
])
def test_pydantic_errors_become_one_line_naming_key_value_and_allowed(raw, message):
    with pytest.raises(ParamsError) as err:
        validate(Outer, raw, "x.")
    assert str(err.value) == message


def test_unknown_keys_are_reported_before_other_errors():
    with pytest.raises(ParamsError, match=r"^unknown key\(s\) \['x.colour'\]"):
        validate(Outer, {"name": 1, "inner": {"count": 0}, "colour": "red"}, "x.")


def test_did_you_mean_ignores_case_and_skips_names_without_a_close_match():
    assert did_you_mean(["Batch_Size", "btch_size", "qqq"], ["batch_size", "seed"]) == {
        "Batch_Size": "batch_size", "btch_size": "batch_size"}
