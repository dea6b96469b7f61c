"""The package's boundaries (../shared/DESIGN.md, "Boundaries"), read from every module's imports.

Every `import` and `from ... import` counts, at module level, inside a function (a deferred
import is still a dependency) or under `if TYPE_CHECKING:` (a cycle of types is still a cycle).
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "recsys"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


@cache
def _imports(module: str) -> frozenset[str]:
    """Every module name `module` imports (absolute, as written; relative ones resolved)."""
    path = _modules()[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            # `from recsys.model import layout` imports the submodule recsys.model.layout
            found.update(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in _modules())
    return frozenset(found)


def _internal(module: str) -> set[str]:
    """The recsys modules `module` imports (a package import counts as its __init__)."""
    out = set()
    for name in _imports(module):
        while name and name not in _modules():
            name = name.rpartition(".")[0]  # `recsys.config.X` names module recsys.config
        if name.startswith("recsys") and name != module:
            out.add(name)
    return out


def _in(module: str, room: str) -> bool:
    return module == f"recsys.{room}" or module.startswith(f"recsys.{room}.")


def _edges() -> list[tuple[str, str]]:
    return [(m, d) for m in _modules() for d in sorted(_internal(m))]


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in _internal(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in _modules():
        if module not in index:
            visit(module)
    return found


def test_the_import_reader_sees_the_package() -> None:
    """Guards the test itself: if it read nothing, every rule below would pass vacuously."""
    assert {"recsys.train.recipe", "recsys.model.click", "recsys.export.scorer"} <= set(_modules())
    assert "recsys.model.click" in _internal("recsys.train.build")
    assert "torchrec" in {n.split(".")[0] for n in _imports("recsys.model.sparse")}


def test_no_import_cycles() -> None:
    assert _cycles() == []


@pytest.mark.parametrize(
    ("room", "forbidden"),
    [
        ("model", ("data", "train", "tracking")),
        ("data", ("model", "train")),
    ],
)
def test_lower_rooms_do_not_import_upper_ones(room: str, forbidden: tuple[str, ...]) -> None:
    bad = [(m, d) for m, d in _edges() if _in(m, room) and any(_in(d, f) for f in forbidden)]
    assert bad == []


def test_only_train_and_cli_reach_mlflow_through_tracking() -> None:
    # bench too: make bench-hashing logs its study as a run, as a training run would.
    apps = ("train", "cli", "bench", "tracking")
    bad = [(m, d) for m, d in _edges() if _in(d, "tracking") and not any(_in(m, r) for r in apps)]
    assert bad == []
    third_party = [m for m in _modules() if "mlflow" in {n.split(".")[0] for n in _imports(m)}]
    assert all(_in(m, "tracking") for m in third_party), third_party


def test_nothing_imports_cli() -> None:
    assert [(m, d) for m, d in _edges() if _in(d, "cli") and not _in(m, "cli")] == []


def _reachable(start: set[str]) -> set[str]:
    seen, todo = set(), list(start)
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(_internal(module))
    return seen


def test_export_needs_no_torchrec_training_or_distributed_code() -> None:
    """Serving loads the export with torch, numpy and pyarrow only."""
    export = {m for m in _modules() if _in(m, "export")}
    reached = _reachable(export)
    assert [m for m in reached if _in(m, "train") or _in(m, "distributed")] == []
    torchrec_users = [m for m in reached if "torchrec" in {n.split(".")[0] for n in _imports(m)}]
    assert torchrec_users == []


def test_dictconfig_stays_in_cli_and_the_config_composer() -> None:
    """Below cli/ everything takes typed dataclasses; recsys.compose turns Hydra's
    DictConfig into one and is the only other module that may hold one."""
    allowed = {"recsys.compose"}
    users = [m for m in _modules() if _names_dictconfig(m) and not _in(m, "cli")]
    assert set(users) <= allowed, users


def _names_dictconfig(module: str) -> bool:
    """Code (not prose) that names DictConfig: an import of it, a use, an annotation."""
    tree = ast.parse(_modules()[module].read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.alias) and node.name.endswith("DictConfig"):
            return True
        if isinstance(node, ast.Name) and node.id == "DictConfig":
            return True
        if isinstance(node, ast.Attribute) and node.attr == "DictConfig":
            return True
        if isinstance(node, ast.Constant) and node.value == "DictConfig":  # string annotations
            return True
    return False
