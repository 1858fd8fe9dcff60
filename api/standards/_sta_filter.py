"""SensorThings ``$filter``: the bounded subset served here, parsed and evaluated. No I/O.

::

    filter     = or
    or         = and *("or" and)
    and        = unary *("and" unary)
    unary      = "not" unary / "(" or ")" / comparison
    comparison = property ("eq" / "ne" / "gt" / "ge" / "lt" / "le") literal
    literal    = number / 'string' / true / false / null / ISO 8601 time

At most 1000 characters, 64 nodes, 8 levels deep; functions (``substringof``,
``geo.distance``, ...) are refused with :class:`NotImplementedHere`, never ignored. Entity
collections are filtered in memory (:func:`evaluate`); an Observations filter becomes
InfluxQL conditions (:func:`observation_filter`, rendered by :mod:`api.storage`).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from api._errors import BadParameter, ProblemError
from api._params import nanoseconds
from api.storage import FieldCondition, FieldFilter

__all__ = [
    "MAX_FILTER_CHARS",
    "MAX_FILTER_DEPTH",
    "MAX_FILTER_NODES",
    "OBSERVATION_FILTER",
    "Bool",
    "Cmp",
    "Filter",
    "NotImplementedHere",
    "bad",
    "evaluate",
    "filter_paths",
    "observation_filter",
    "parse_filter",
    "value_at",
]

MAX_FILTER_CHARS: Final = 1000
MAX_FILTER_NODES: Final = 64
MAX_FILTER_DEPTH: Final = 8
#: Properties an Observations ``$filter`` may name (they become InfluxQL conditions).
OBSERVATION_FILTER: Final = frozenset({"result", "phenomenonTime", "resultTime"})
_CMP: Final = {"eq": "=", "ne": "!=", "gt": ">", "ge": ">=", "lt": "<", "le": "<="}
_NEGATE: Final = {"eq": "ne", "ne": "eq", "gt": "le", "ge": "lt", "lt": "ge", "le": "gt"}


class NotImplementedHere(ProblemError):
    """Valid SensorThings that this read-only subset does not serve."""

    status = 400
    slug = "not-supported"
    title = "Not supported here"


Op = Literal["eq", "ne", "gt", "ge", "lt", "le"]
Literal_ = float | str | bool | dt.datetime | None


@dataclass(frozen=True, slots=True)
class Cmp:
    path: str
    op: Op
    value: Literal_


@dataclass(frozen=True, slots=True)
class Bool:
    join: Literal["and", "or", "not"]
    items: tuple[Filter, ...]


Filter = Cmp | Bool

_TOKEN: Final = re.compile(
    r"\s*(?:"
    r"(?P<str>'(?:[^']|'')*')"
    r"|(?P<time>\d{4}-\d\d-\d\dT\d\d:\d\d(?::\d\d(?:\.\d{1,9})?)?(?:Z|[+-]\d\d:\d\d))"
    r"|(?P<num>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)"
    r"|(?P<name>[A-Za-z@][A-Za-z0-9_@.]*(?:/[A-Za-z@][A-Za-z0-9_@.]*)*)"
    r"|(?P<punct>[(),])"
    r")"
)
_OPS: Final = frozenset({"eq", "ne", "gt", "ge", "lt", "le"})
_FUNCTIONS: Final = frozenset(
    {"substringof", "endswith", "startswith", "length", "indexof", "substring", "tolower",
     "toupper", "trim", "concat", "year", "month", "day", "hour", "minute", "second",
     "fractionalseconds", "date", "time", "totaloffsetminutes", "now", "mindatetime",
     "maxdatetime", "round", "floor", "ceiling", "geo.distance", "geo.length",
     "geo.intersects", "st_equals", "st_disjoint", "st_touches", "st_within", "st_overlaps",
     "st_crosses", "st_intersects", "st_contains", "st_relate", "add", "sub", "mul", "div",
     "mod"}
)


def bad(detail: str, parameter: str = "$filter") -> BadParameter:
    return BadParameter(detail, parameter=parameter)


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise bad(f"$filter: cannot read {text[pos:pos + 30]!r}")
        kind = match.lastgroup
        assert kind is not None
        out.append((kind, match.group(kind)))
        pos = match.end()
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.pos = 0
        self.nodes = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise bad("$filter: ends too early")
        self.pos += 1
        return token

    def count(self, depth: int) -> None:
        self.nodes += 1
        if self.nodes > MAX_FILTER_NODES:
            raise bad(f"$filter: more than {MAX_FILTER_NODES} nodes")
        if depth > MAX_FILTER_DEPTH:
            raise bad(f"$filter: nested deeper than {MAX_FILTER_DEPTH}")

    def expr(self, depth: int) -> Filter:
        items = [self.conj(depth + 1)]
        while self.peek() == ("name", "or"):
            self.take()
            items.append(self.conj(depth + 1))
        self.count(depth)
        return items[0] if len(items) == 1 else Bool("or", tuple(items))

    def conj(self, depth: int) -> Filter:
        items = [self.unary(depth + 1)]
        while self.peek() == ("name", "and"):
            self.take()
            items.append(self.unary(depth + 1))
        self.count(depth)
        return items[0] if len(items) == 1 else Bool("and", tuple(items))

    def unary(self, depth: int) -> Filter:
        self.count(depth)
        token = self.peek()
        if token == ("name", "not"):
            self.take()
            return Bool("not", (self.unary(depth + 1),))
        if token == ("punct", "("):
            self.take()
            inner = self.expr(depth + 1)
            if self.take() != ("punct", ")"):
                raise bad("$filter: a '(' without its ')'")
            return inner
        return self.comparison()

    def comparison(self) -> Cmp:
        kind, path = self.take()
        if kind != "name":
            raise bad(f"$filter: expected a property name, not {path[:50]!r}")
        nxt = self.peek()
        if path.lower() in _FUNCTIONS or nxt == ("punct", "("):
            raise NotImplementedHere(
                f"$filter: the function {path[:50]!r} is not supported here; comparisons "
                "joined by and/or/not are", parameter="$filter")
        kind, op = self.take()
        if kind != "name" or op not in _OPS:
            raise bad(f"$filter: expected eq, ne, gt, ge, lt or le after {path[:50]!r}")
        return Cmp(path, op, self.literal())  # type: ignore[arg-type]

    def literal(self) -> Literal_:
        kind, text = self.take()
        if kind == "str":
            return text[1:-1].replace("''", "'")
        if kind == "num":
            number = float(text)
            if not math.isfinite(number):
                raise bad(f"$filter: {text[:50]!r} is not a finite number")
            return number
        if kind == "time":
            try:
                moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError as exc:
                raise bad(f"$filter: {text!r} is not a time") from exc
            return moment
        if kind == "name" and text in ("true", "false"):
            return text == "true"
        if kind == "name" and text == "null":
            return None
        raise bad(f"$filter: expected a literal, not {text[:50]!r}")


def parse_filter(text: str) -> Filter:
    """Parse ``$filter`` into a tree of at most 64 nodes (see the module docstring)."""
    if len(text) > MAX_FILTER_CHARS:
        raise bad(f"$filter: longer than {MAX_FILTER_CHARS} characters")
    if not text.strip():
        raise bad("$filter: empty")
    parser = _Parser(text)
    tree = parser.expr(0)
    if parser.peek() is not None:
        raise bad(f"$filter: unexpected {parser.peek()[1][:50]!r}")  # type: ignore[index]
    return tree


def value_at(row: Mapping[str, Any], path: str) -> Any:
    current: Any = row
    for part in path.split("/"):
        if part == "id":
            part = "@iot.id"
        if not isinstance(current, Mapping) or part not in current:
            return None
        current = current[part]
    return current


def _as_time(value: Any) -> dt.datetime | None:
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, str) and len(value) >= 20 and value[4] == "-" and value[10] == "T":
        try:
            return dt.datetime.fromisoformat(value.split("/")[0].replace("Z", "+00:00"))
        except ValueError:
            return None
    return None


def _compare(actual: Any, op: Op, expected: Literal_) -> bool:
    if isinstance(expected, dt.datetime):
        actual = _as_time(actual)
        if actual is None:
            return False
    elif expected is None or isinstance(expected, bool):
        if op not in ("eq", "ne"):
            return False
        same = actual is expected if expected is None else (
            isinstance(actual, bool) and actual == expected)
        return same if op == "eq" else not same
    elif isinstance(expected, float):
        if isinstance(actual, bool) or not isinstance(actual, int | float):
            return op == "ne"
    elif not isinstance(actual, str):
        return op == "ne"
    match op:
        case "eq":
            return bool(actual == expected)
        case "ne":
            return bool(actual != expected)
        case "gt":
            return bool(actual > expected)
        case "ge":
            return bool(actual >= expected)
        case "lt":
            return bool(actual < expected)
        case _:
            return bool(actual <= expected)


def evaluate(tree: Filter, row: Mapping[str, Any]) -> bool:
    """Whether an entity (its JSON form) matches a parsed ``$filter``."""
    if isinstance(tree, Cmp):
        return _compare(value_at(row, tree.path), tree.op, tree.value)
    if tree.join == "not":
        return not evaluate(tree.items[0], row)
    if tree.join == "and":
        return all(evaluate(item, row) for item in tree.items)
    return any(evaluate(item, row) for item in tree.items)


def filter_paths(tree: Filter) -> set[str]:
    if isinstance(tree, Cmp):
        return {tree.path}
    return set().union(*(filter_paths(item) for item in tree.items))



def observation_filter(tree: Filter | None,
                       ) -> tuple[list[tuple[str, int]], FieldFilter | FieldCondition | None]:
    """An Observations ``$filter`` as InfluxQL conditions: time comparisons ANDed at the top
    (InfluxQL has no OR on time), and any and/or/not tree of ``result`` comparisons."""
    if tree is None:
        return [], None
    items = tree.items if isinstance(tree, Bool) and tree.join == "and" else (tree,)
    times: list[tuple[str, int]] = []
    values: list[FieldFilter | FieldCondition] = []
    for item in items:
        paths = filter_paths(item)
        unknown = paths - OBSERVATION_FILTER
        if unknown:
            raise BadParameter(
                f"$filter of Observations: {sorted(unknown)[0]!r} is not one of "
                f"{sorted(OBSERVATION_FILTER)}", parameter="$filter")
        if isinstance(item, Cmp) and item.path != "result":
            moment = item.value
            if item.op == "ne" or not isinstance(moment, dt.datetime):
                raise BadParameter(f"$filter: {item.path} compares with eq, gt, ge, lt or le "
                                   "and a time (2024-01-31T12:00:00Z)", parameter="$filter")
            ns = nanoseconds(moment, "$filter")
            if item.op == "eq":
                times.extend([(">=", ns), ("<=", ns)])
            else:
                times.append((_CMP[item.op], ns))
            continue
        if paths != {"result"}:
            raise BadParameter("$filter of Observations: time comparisons go at the top "
                               "level, joined by and (InfluxQL has no or on time)",
                               parameter="$filter")
        values.append(_result_filter(item, negate=False))
    value: FieldFilter | FieldCondition | None = None
    if len(values) == 1:
        value = values[0]
    elif values:
        value = FieldFilter("AND", tuple(values))
    return times, value


def _result_filter(tree: Filter, *, negate: bool) -> FieldFilter | FieldCondition:
    if isinstance(tree, Cmp):
        literal = tree.value
        if literal is None or isinstance(literal, dt.datetime):
            raise BadParameter("$filter: result compares with a number, a string or a "
                               "boolean", parameter="$filter")
        op = _NEGATE[tree.op] if negate else tree.op
        return FieldCondition(_CMP[op], literal)
    if tree.join == "not":
        return _result_filter(tree.items[0], negate=not negate)
    join = "AND" if (tree.join == "and") != negate else "OR"
    return FieldFilter(join, tuple(_result_filter(i, negate=negate) for i in tree.items))
