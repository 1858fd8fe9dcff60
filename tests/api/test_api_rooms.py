"""The shape of ``api/``: InfluxQL lives in one place, rooms do not lean on each other's
routes, and every room says what it is for. Read from the source, nothing is imported."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

API = Path(__file__).resolve().parents[2] / "api"
ROOMS = ("routes", "standards", "state", "storage", "dashboard")
#: InfluxQL keywords and time arithmetic: what a statement cannot be written without.
_INFLUXQL = re.compile(r"\b(SELECT|SHOW)\b|\bnow\(\)")


def _sources() -> list[Path]:
    return sorted(p for p in API.rglob("*.py") if "__pycache__" not in p.parts)


def test_influxql_is_written_in_storage_only() -> None:
    """``api/storage/_queries.py`` builds every statement from validated values; a statement
    written anywhere else would bypass that."""
    found = [
        f"{path.relative_to(API.parent)}:{n}: {line.strip()}"
        for path in _sources()
        if API / "storage" not in path.parents
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if _INFLUXQL.search(line)
    ]
    assert not found, "InfluxQL outside api/storage:\n" + "\n".join(found)


def test_the_statements_are_in_one_module() -> None:
    storage = [
        path.name for path in (API / "storage").glob("*.py")
        if path.name != "_queries.py" and _INFLUXQL.search(path.read_text())
    ]
    assert not storage


def _imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


@pytest.mark.parametrize("room", ["routes", "standards"])
def test_endpoint_modules_do_not_import_other_endpoint_modules(room: str) -> None:
    """A route module shares through ``_params``, ``state`` or ``storage``, not through
    another route module."""
    wrong = [
        f"{path.name} imports {target}"
        for path in sorted((API / room).glob("_*.py"))
        if path.name != "__init__.py"
        for target in _imports(path)
        if target.startswith("api.routes.")
    ]
    assert not wrong


@pytest.mark.parametrize("room", ROOMS)
def test_every_room_is_a_package_that_says_its_job(room: str) -> None:
    init = API / room / "__init__.py"
    doc = ast.get_docstring(ast.parse(init.read_text()))
    assert doc, f"api/{room}/__init__.py has no docstring"
    assert 1 <= len(doc.splitlines()) <= 8


def test_modules_stay_small() -> None:
    big = [
        f"{path.relative_to(API.parent)}: {n} lines"
        for path in _sources()
        if (n := len(path.read_text().splitlines())) > 500
    ]
    assert not big
