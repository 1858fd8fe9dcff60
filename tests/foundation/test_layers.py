"""The house plan, enforced: layers import downwards only, packages meet at public names, and
no package has an import circle (docs/architecture.md draws the plan).

Read from the source with ``ast``, so a violation fails here before any import runs. Imports
under ``if TYPE_CHECKING:`` are for annotations only and are not counted. Imports inside a
function count like any other: deferring an import hides a circle from Python, not from the
design.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Bottom up. A package may import its own layer's shared ground and anything below; the
#: services of layer 4 never import each other.
LAYERS: dict[str, int] = {
    "telemetry": 1,
    "foundation": 2,
    "firmware_bridge": 3,
    "edge_agent": 4,
    "ingest": 4,
    "api": 4,
    "simulators": 4,
    "smartcity": 5,
}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted
    target: str  # the imported module, dotted (absolute)
    line: int
    top_level: bool  # at module level (not inside a function), so it runs at import time


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path) -> Iterator[Import]:
    module = _module_name(path)
    tree = ast.parse(path.read_text(), filename=str(path))

    def visit(node: ast.AST, top_level: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    yield from visit(sub, top_level)
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield Import(module, alias.name, child.lineno, top_level)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                # "from pkg import submodule" needs the submodule; "from pkg import name"
                # needs pkg itself (its __init__, or the module that defines the name).
                names = [f"{child.module}.{alias.name}" for alias in child.names]
                submodules = [n for n in names if n in _all_modules()]
                if len(submodules) < len(names):
                    yield Import(module, child.module, child.lineno, top_level)
                for target in submodules:
                    yield Import(module, target, child.lineno, top_level)
            inner = top_level and not isinstance(
                child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda
            )
            yield from visit(child, inner)

    yield from visit(tree, True)


def _package_files() -> Iterator[Path]:
    for package in LAYERS:
        yield from sorted((ROOT / package).rglob("*.py"))


@functools.cache
def _all_modules() -> frozenset[str]:
    return frozenset(_module_name(path) for path in _package_files())


ALL_IMPORTS = [imp for path in _package_files() for imp in _imports(path)]
MODULES = _all_modules()


def _ours(target: str) -> bool:
    return target.split(".")[0] in LAYERS


def test_layers_import_downwards_only() -> None:
    wrong = []
    for imp in ALL_IMPORTS:
        if not _ours(imp.target):
            continue
        own, other = imp.module.split(".")[0], imp.target.split(".")[0]
        if own == other:
            continue
        if LAYERS[other] > LAYERS[own] or (LAYERS[other] == LAYERS[own] == 4):
            wrong.append(f"{imp.module}:{imp.line} imports {imp.target}")
    assert not wrong, "imports against the layers:\n" + "\n".join(sorted(set(wrong)))


def test_packages_meet_at_public_names() -> None:
    """Another package's ``_private`` modules are its own business (tests may look inside)."""
    wrong = []
    for imp in ALL_IMPORTS:
        if not _ours(imp.target):
            continue
        own, other = imp.module.split(".")[0], imp.target.split(".")[0]
        if own != other and any(part.startswith("_") for part in imp.target.split(".")[1:]):
            wrong.append(f"{imp.module}:{imp.line} imports {imp.target}")
    assert not wrong, "imports of another package's private modules:\n" + "\n".join(
        sorted(set(wrong))
    )


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for imp in ALL_IMPORTS:
        target = imp.target
        while target and target not in MODULES:  # "from pkg.mod import name" -> pkg.mod
            target = target.rpartition(".")[0]
        if target and target != imp.module:
            graph[imp.module].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_no_import_circles(package: str) -> None:
    graph = _graph()
    circles = [c for c in _cycles(graph) if c[0].split(".")[0] == package]
    assert not circles, f"import circles in {package}:\n" + "\n".join(
        " <-> ".join(c) for c in circles
    )


def test_the_plan_knows_every_package() -> None:
    """A new top-level package must be placed in a layer (and in docs/architecture.md)."""
    packages = {
        p.name
        for p in ROOT.iterdir()
        if (p / "__init__.py").is_file() and p.name not in {"tests", "bench", "requirements"}
    }
    assert packages == set(LAYERS), packages ^ set(LAYERS)
    plan = (ROOT / "docs" / "architecture.md").read_text()
    for package in LAYERS:
        assert f"`{package}/`" in plan, f"docs/architecture.md does not place {package}/"
