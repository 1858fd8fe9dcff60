"""NGSI-LD query subsets served here: ``q`` (clause 4.9) and the ``near`` geo-query (4.10).

Pure functions over attribute values (:func:`api.standards._ngsild.attribute_values`);
what they cannot evaluate is :class:`OperationNotSupported`, never silently ignored.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, cast

from api.standards._ngsild import (
    BadRequestData,
    Context,
    OperationNotSupported,
    TooComplexQuery,
    expand_term,
)
from telemetry import NAME_RE

__all__ = [
    "GeoQuery",
    "Query",
    "Term",
    "haversine_m",
    "parse_georel",
    "parse_q",
]


# ---------------------------------------------------------------------------------------------
# q: the subset of the NGSI-LD query language (clause 4.9) served here
#
#   q      = term *(";" term)                  ";" is AND
#   term   = attr [op value]                   attr alone: the attribute exists
#   op     = "==" / "!=" / ">" / ">=" / "<" / "<="
#   value  = number / "quoted string" / true / false / DateTime
#          / value ".." value / value *("," value)     ranges and lists with == and != only

_OPS: Final = ("!~=", "~=", "==", "!=", ">=", "<=", ">", "<")
Op = Literal["==", "!=", ">", ">=", "<", "<="]
Scalar = float | str | bool | dt.datetime


@dataclass(frozen=True, slots=True)
class Term:
    attr: str
    op: Op | None = None
    values: tuple[Scalar, ...] = ()
    range: tuple[Scalar, Scalar] | None = None

    def matches(self, attrs: Mapping[str, Any]) -> bool:
        if self.attr not in attrs:
            return False
        if self.op is None:
            return True
        actual = attrs[self.attr]
        if self.range is not None:
            lo, hi = self.range
            inside = _compare(actual, ">=", lo) and _compare(actual, "<=", hi)
            return inside if self.op == "==" else (_comparable(actual, lo) and not inside)
        if self.op == "==":
            return any(_compare(actual, "==", v) for v in self.values)
        if self.op == "!=":
            return all(_compare(actual, "!=", v) for v in self.values)
        return _compare(actual, self.op, self.values[0])


@dataclass(frozen=True, slots=True)
class Query:
    """A parsed ``q``: every term must match."""

    terms: tuple[Term, ...]

    def matches(self, attrs: Mapping[str, Any]) -> bool:
        return all(term.matches(attrs) for term in self.terms)


def _kind(value: object) -> str | None:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dt.datetime):
        return "datetime"
    return None


def _comparable(actual: object, expected: object) -> bool:
    kind = _kind(actual)
    return kind is not None and kind == _kind(expected)


def _compare(actual: Any, op: str, expected: Any) -> bool:
    if not _comparable(actual, expected):
        return False
    if isinstance(actual, bool) and op not in ("==", "!="):
        return False
    match op:
        case "==":
            return bool(actual == expected)
        case "!=":
            return bool(actual != expected)
        case ">":
            return bool(actual > expected)
        case ">=":
            return bool(actual >= expected)
        case "<":
            return bool(actual < expected)
        case _:
            return bool(actual <= expected)


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if quoted:
        raise BadRequestData("q: unterminated string (a \" without its closing \")",
                             parameter="q")
    parts.append("".join(current))
    return parts


def _scalar(text: str) -> Scalar:
    if len(text) >= 2 and text[0] == text[-1] == '"':
        inner = text[1:-1]
        if '"' in inner:
            raise BadRequestData(f"q: bad string {text!r}", parameter="q")
        return inner
    if text in ("true", "false"):
        return text == "true"
    try:
        number = float(text)
    except ValueError:
        number = None
    if number is not None:
        if not math.isfinite(number):
            raise BadRequestData(f"q: {text!r} is not a finite number", parameter="q")
        return number
    if re.fullmatch(r"\d{4}-\d\d-\d\d(T[0-9:.]+(Z|[+-]\d\d:?\d\d)?)?", text):
        try:
            moment = dt.datetime.fromisoformat(text)
        except ValueError:
            moment = None
        if moment is not None:
            return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
    raise BadRequestData(
        f"q: cannot read the value {text[:100]!r}: numbers, \"quoted strings\", true, false "
        "and DateTimes (2024-01-31T12:00:00Z) are understood", parameter="q",
    )


#: Cost cap of ``q``: terms, and values in one term's list.
MAX_Q_TERMS: Final = 32
MAX_Q_VALUES: Final = 100


def parse_q(text: str, context: Context | None = None) -> Query:
    """Parse ``q``; :class:`BadRequestData` if malformed, :class:`OperationNotSupported` for
    valid NGSI-LD this subset does not evaluate (``|``, parentheses, ``~=``, attribute paths).
    """
    if len(text) > 2000:
        raise BadRequestData("q: longer than 2000 characters", parameter="q")
    if not text.strip():
        raise BadRequestData("q: empty query", parameter="q")
    unquoted = re.sub(r'"[^"]*"', '""', text)
    for token, what in (("|", "OR (|)"), ("(", "parentheses"), (")", "parentheses"),
                        ("~=", "pattern matching (~=, !~=)"), ("[", "compound values ([...])")):
        if token in unquoted:
            raise OperationNotSupported(
                f"q: {what} is not supported here; terms joined by ';' (AND) with ==, !=, >, "
                ">=, <, <= are", parameter="q",
            )
    terms = []
    raws = _split_outside_quotes(text, ";")
    if len(raws) > MAX_Q_TERMS:
        raise TooComplexQuery(f"q: at most {MAX_Q_TERMS} terms", parameter="q")
    for raw in raws:
        part = raw.strip()
        match = re.match(r"[A-Za-z@][A-Za-z0-9_@.:/#-]*", part)
        if match is None:
            raise BadRequestData(f"q: {part[:100]!r} does not start with an attribute name",
                                 parameter="q")
        attr, rest = match.group(0), part[match.end():]
        if "." in attr and not attr.startswith(("http://", "https://")):
            raise OperationNotSupported(
                f"q: attribute paths ({attr!r}: sub-attributes, observedAt) are not supported "
                "here; use attribute names", parameter="q",
            )
        attr = context.expand(attr) if context is not None else expand_term(attr)
        if not NAME_RE.fullmatch(attr) and not attr.startswith(("http://", "https://")):
            raise BadRequestData(f"q: {attr[:100]!r} is not an attribute name", parameter="q")
        if not rest:
            terms.append(Term(attr))
            continue
        op = next((o for o in _OPS if rest.startswith(o)), None)
        if op is None:
            raise BadRequestData(f"q: unknown operator in {part[:100]!r}", parameter="q")
        value = rest[len(op):].strip()
        if not value:
            raise BadRequestData(f"q: {part[:100]!r} has no value", parameter="q")
        if ".." in value and not value.startswith('"'):
            lo, _, hi = value.partition("..")
            if op not in ("==", "!="):
                raise BadRequestData("q: a range (a..b) needs == or !=", parameter="q")
            low, high = _scalar(lo.strip()), _scalar(hi.strip())
            if not _comparable(low, high):
                raise BadRequestData("q: both ends of a range need the same type", parameter="q")
            terms.append(Term(attr, cast(Op, op), (), (low, high)))
            continue
        items = _split_outside_quotes(value, ",")
        if len(items) > MAX_Q_VALUES:
            raise TooComplexQuery(f"q: at most {MAX_Q_VALUES} values in a list", parameter="q")
        if len(items) > 1 and op not in ("==", "!="):
            raise BadRequestData("q: a list of values needs == or !=", parameter="q")
        values = tuple(_scalar(item.strip()) for item in items)
        terms.append(Term(attr, cast(Op, op), values))
    return Query(tuple(terms))


# ---------------------------------------------------------------------------------------------
# Geo-query: georel=near;maxDistance==N (or minDistance) around a Point, distances in metres

_EARTH_RADIUS_M: Final = 6_371_008.8
_GEORELS: Final = ("equals", "disjoint", "intersects", "within", "contains", "overlaps")
_GEOMETRIES: Final = ("Point", "MultiPoint", "LineString", "MultiLineString", "Polygon",
                      "MultiPolygon")


@dataclass(frozen=True, slots=True)
class GeoQuery:
    lon: float
    lat: float
    max_distance: float | None = None
    min_distance: float | None = None

    def matches(self, lon: float, lat: float) -> bool:
        distance = haversine_m(self.lon, self.lat, lon, lat)
        if self.max_distance is not None and distance > self.max_distance:
            return False
        return not (self.min_distance is not None and distance < self.min_distance)


def haversine_m(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    """Great-circle distance in metres on the mean Earth radius."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * _EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def parse_georel(
    georel: str | None, geometry: str | None, coordinates: str | None
) -> GeoQuery | None:
    """The geo-query of ``georel``/``geometry``/``coordinates`` (clause 4.10), or None."""
    if georel is None and geometry is None and coordinates is None:
        return None
    if georel is None or geometry is None or coordinates is None:
        raise BadRequestData("a geo-query needs georel, geometry and coordinates together",
                             parameter="georel")
    match = re.fullmatch(r"near;(maxDistance|minDistance)==(\d+(?:\.\d+)?)", georel)
    if match is None:
        if georel in _GEORELS:
            raise OperationNotSupported(
                f"georel={georel} is not supported here; near;maxDistance==<metres> and "
                "near;minDistance==<metres> around a Point are", parameter="georel",
            )
        raise BadRequestData(
            f"georel {georel[:100]!r} is not near;maxDistance==<metres>, "
            "near;minDistance==<metres> or one of " + ", ".join(_GEORELS), parameter="georel",
        )
    if geometry != "Point":
        if geometry in _GEOMETRIES:
            raise OperationNotSupported("georel=near needs geometry=Point here",
                                        parameter="geometry")
        raise BadRequestData(f"geometry {geometry[:100]!r} is not a GeoJSON geometry type",
                             parameter="geometry")
    try:
        position = json.loads(coordinates)
    except ValueError:
        position = None
    if (
        not isinstance(position, list) or len(position) not in (2, 3)
        or not all(_is_number(v) and math.isfinite(v) for v in position)
        or not (-180 <= position[0] <= 180 and -90 <= position[1] <= 90)
    ):
        raise BadRequestData(
            "coordinates must be a GeoJSON position [longitude, latitude] in degrees",
            parameter="coordinates",
        )
    distance = float(match.group(2))
    if match.group(1) == "maxDistance":
        return GeoQuery(float(position[0]), float(position[1]), max_distance=distance)
    return GeoQuery(float(position[0]), float(position[1]), min_distance=distance)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
