"""The floor plan, checked: no import cycles, no module imports a stage, dvc.yaml deps are complete.

Imports are read statically (every ``import`` in a module, also inside functions, except under
``if TYPE_CHECKING:``), so a lazy import cannot hide a cycle.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from tests.paths import ROOT

PACKAGE = ROOT / "pipeline"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imported_modules(name: str) -> set[str]:
    """The project modules ``name`` imports (a package import counts as its ``__init__``)."""
    tree = ast.parse(MODULES[name].read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = set()
    for node in ast.walk(tree):
        if _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            candidates = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found.update(c for c in candidates if c in MODULES and c != name)
    return found


GRAPH = {name: imported_modules(name) for name in MODULES}


def closure(start: str, with_packages: bool = False) -> set[str]:
    """Every module ``start`` imports, directly or not (``with_packages``: and the packages'
    ``__init__`` modules, which Python runs first: what a process loads)."""
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(GRAPH[name])
            if with_packages:
                todo.extend(p for p in _parent_packages(name) if p in MODULES)
    return seen


def _parent_packages(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def test_the_import_graph_has_no_cycle():
    for name in MODULES:
        for imported in GRAPH[name]:
            assert name not in closure(imported), (
                f"import cycle: {name} imports {imported}, which imports {name} back")


def test_no_module_imports_a_stage():
    for name, imports in GRAPH.items():
        if not name.startswith("pipeline.stages"):
            stages = sorted(i for i in imports if i.startswith("pipeline.stages"))
            assert not stages, f"{name} imports stage modules {stages}"


def _stage_modules() -> dict[str, str]:
    from pipeline.cli import STAGES
    return {stage: module for stage, (module, _help) in STAGES.items()}


@pytest.mark.parametrize("stage", ["sample", "convert", "configure", "train", "export", "report"])
def test_dvc_stage_deps_cover_every_module_it_imports(stage):
    deps = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]["deps"]
    code = [d for d in deps if str(d).startswith("pipeline")]
    needed = closure(_stage_modules()[stage], with_packages=True) | {"pipeline.cli"}
    missing = sorted(
        name for name in needed
        if not any(MODULES[name].relative_to(ROOT).as_posix() == d
                   or MODULES[name].relative_to(ROOT).as_posix().startswith(d.rstrip("/") + "/")
                   for d in code))
    assert not missing, f"dvc.yaml stage {stage} does not depend on {missing}"
