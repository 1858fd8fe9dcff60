"""OGC SensorThings API 1.1 (read side): ids, errors and the bounded query options. No I/O.

The routes (``_sta_routes.py``) build entities from the API's live state and inventory, and
Observations from InfluxDB; this module parses what a client asks for.

Ids (``@iot.id``, strings; stable: derived from what the data already names, never stored)::

    Thing               <gateway>                                  a gateway
    Location            <gateway>                                  the gateway's location
                        <gateway>:<device>                         a device's location (a
                                                                   vehicle's: its live position)
    FeatureOfInterest   <gateway>:<device>                         where a device observes
    Sensor              <gateway>:<device>                         a device
    ObservedProperty    <Measurement>.<field>                      a vocabulary field
    Datastream          <gateway>:<device>:<Measurement>.<field>[:<tag>=<value>]...
    Observation         <Datastream id>:<time in ns>               one stored point
    HistoricalLocation  <gateway>:<device>:<time in ns>            a vehicle's stored position

Gateway, device, tag keys and values are escaped as ``~XX`` (UTF-8 bytes in hex) except
``A-Z a-z 0-9 . _ -``: ``bus:7`` is ``bus~3A7``. ``~`` is unreserved in URLs, so no client
or proxy re-encodes an id, and ``:`` always separates its segments.

Query options, bounded (every one validated, refused with a 400 problem naming it)::

    $filter   comparisons (eq ne gt ge lt le) of a property and a literal (number,
              'string', true, false, ISO 8601 time), joined by and/or, negated by not,
              parenthesised; at most 1000 characters, 64 nodes, depth 8. No functions.
    $select   property names          $orderby  properties, asc|desc (Observations:
    $expand   navigation properties, nested by / or ($...;...) options, depth <= 2
    $top      <= 1000 (default 100)   $skip <= 1,000,000     $count true|false
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from api.standards._sta_filter import (
    Bool,
    Cmp,
    Filter,
    NotImplementedHere,
    bad,
    evaluate,
    filter_paths,
    observation_filter,
    parse_filter,
    value_at,
)

__all__ = [
    "DEFAULT_TOP",
    "MAX_EXPAND_DEPTH",
    "MAX_SKIP",
    "MAX_TOP",
    "Bool",
    "Cmp",
    "Expand",
    "Filter",
    "NotImplementedHere",
    "Options",
    "decode",
    "encode",
    "evaluate",
    "filter_paths",
    "observation_filter",
    "parse_expand",
    "parse_filter",
    "parse_options",
    "split_id",
    "value_at",
]

MAX_TOP: Final = 1000
DEFAULT_TOP: Final = 100
MAX_SKIP: Final = 1_000_000
MAX_EXPAND_DEPTH: Final = 2
MAX_SELECT: Final = 32
MAX_EXPAND_ITEMS: Final = 8


# ---------------------------------------------------------------------------------------------
# Ids

_SAFE: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


def encode(text: str) -> str:
    """One id segment: ``~XX`` for every byte outside ``A-Z a-z 0-9 . _ -``."""
    return "".join(ch if ch in _SAFE else "".join(f"~{b:02X}" for b in ch.encode())
                   for ch in text)


def decode(segment: str) -> str | None:
    """The text of an id segment; None when it is not one :func:`encode` makes."""
    if not segment or len(segment) > 400:
        return None
    raw = bytearray()
    pos = 0
    while pos < len(segment):
        ch = segment[pos]
        if ch == "~":
            hexa = segment[pos + 1:pos + 3]
            if len(hexa) != 2 or not all(c in "0123456789ABCDEF" for c in hexa):
                return None
            raw.append(int(hexa, 16))
            pos += 3
        elif ch in _SAFE:
            raw.extend(ch.encode())
            pos += 1
        else:
            return None
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        return None
    return text if encode(text) == segment else None


def split_id(text: str, parts: int | None = None) -> list[str] | None:
    """The decoded segments of an id (``parts`` of them when given); None if malformed."""
    if len(text) > 1024:
        return None
    segments = text.split(":")
    if parts is not None and len(segments) != parts:
        return None
    out = []
    for segment in segments:
        value = decode(segment)
        if value is None:
            return None
        out.append(value)
    return out


# ---------------------------------------------------------------------------------------------
# $select, $orderby, $expand, $top, $skip, $count


@dataclass(slots=True)
class Expand:
    """One navigation property to expand, with its own options."""

    name: str
    options: Options


@dataclass(slots=True)
class Options:
    top: int = DEFAULT_TOP
    skip: int = 0
    count: bool = False
    filter: Filter | None = None
    select: list[str] | None = None
    orderby: list[tuple[str, bool]] = field(default_factory=list)  # (property, descending)
    expand: list[Expand] = field(default_factory=list)
    top_given: bool = False
    #: The options as given (for the ``@iot.nextLink`` of an expanded collection).
    raw: dict[str, str] = field(default_factory=dict)


_OPTION_NAMES: Final = frozenset({"$top", "$skip", "$count", "$filter", "$select", "$orderby",
                                  "$expand", "$resultFormat"})
_PROPERTY: Final = re.compile(
    r"[A-Za-z@][A-Za-z0-9_@.]{0,63}(?:/[A-Za-z@][A-Za-z0-9_@.]{0,63}){0,3}")
_NAV: Final = re.compile(r"[A-Z][A-Za-z]{0,40}")


def _split_top(text: str, sep: str, what: str) -> list[str]:
    """Split at ``sep`` outside parentheses and quotes."""
    parts: list[str] = []
    depth = 0
    quoted = False
    current: list[str] = []
    for ch in text:
        if ch == "'":
            quoted = not quoted
        elif not quoted and ch == "(":
            depth += 1
        elif not quoted and ch == ")":
            depth -= 1
            if depth < 0:
                raise bad(f"{what}: a ')' without its '('", what)
        if ch == sep and depth == 0 and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if depth or quoted:
        raise bad(f"{what}: unbalanced parentheses or quotes", what)
    parts.append("".join(current))
    return parts


def _int(value: str, name: str, high: int) -> int:
    if not re.fullmatch(r"[0-9]{1,9}", value.strip()):
        raise bad(f"{name} must be a whole number from 0 to {high}", name)
    number = int(value)
    if number > high:
        raise bad(f"{name} must be at most {high}", name)
    return number


def parse_options(params: Mapping[str, str], *, depth: int = 0) -> Options:
    """Options of a request (or of one ``$expand`` item); unknown ``$`` options and plain
    parameters are refused, never ignored."""
    options = Options(raw=dict(params))
    for name, value in params.items():
        if name not in _OPTION_NAMES:
            raise bad(f"unknown query option {name[:50]!r}", name[:50])
        if len(value) > 4000:
            raise bad(f"{name}: longer than 4000 characters", name)
        if name == "$top":
            options.top = _int(value, name, MAX_TOP)
            options.top_given = True
        elif name == "$skip":
            options.skip = _int(value, name, MAX_SKIP)
        elif name == "$count":
            if value not in ("true", "false"):
                raise bad("$count must be true or false", name)
            options.count = value == "true"
        elif name == "$filter":
            options.filter = parse_filter(value)
        elif name == "$resultFormat":
            raise NotImplementedHere("$resultFormat (dataArray) is not supported here",
                                     parameter=name)
        elif name == "$select":
            items = [s.strip() for s in value.split(",")]
            if len(items) > MAX_SELECT or not all(_PROPERTY.fullmatch(s) for s in items):
                raise bad(f"$select: up to {MAX_SELECT} property names", name)
            options.select = items
        elif name == "$orderby":
            for item in value.split(","):
                words = item.split()
                if not 1 <= len(words) <= 2 or not _PROPERTY.fullmatch(words[0]) or (
                        len(words) == 2 and words[1].lower() not in ("asc", "desc")):
                    raise bad("$orderby: property [asc|desc], comma-separated", name)
                options.orderby.append((words[0], len(words) == 2 and words[1].lower() == "desc"))
            if len(options.orderby) > 4:
                raise bad("$orderby: at most 4 properties", name)
        else:
            options.expand = parse_expand(value, depth=depth)
    return options


def parse_expand(text: str, *, depth: int = 0) -> list[Expand]:
    """``$expand``: ``A,B/C,D($top=2;$expand=E)``; at most :data:`MAX_EXPAND_DEPTH` deep."""
    items = [s.strip() for s in _split_top(text, ",", "$expand")]
    if len(items) > MAX_EXPAND_ITEMS:
        raise bad(f"$expand: at most {MAX_EXPAND_ITEMS} items", "$expand")
    out: list[Expand] = []
    for item in items:
        name, paren, rest = item.partition("(")
        head, slash, tail = name.partition("/")
        if paren and slash:
            raise bad("$expand: write A($expand=B(...)) rather than A/B(...)", "$expand")
        if not _NAV.fullmatch(head.strip()):
            raise bad(f"$expand: {head[:50]!r} is not a navigation property", "$expand")
        if depth + 1 > MAX_EXPAND_DEPTH:
            raise bad(f"$expand: at most {MAX_EXPAND_DEPTH} levels deep", "$expand")
        if slash:
            options = Options(expand=parse_expand(tail, depth=depth + 1))
        elif paren:
            if not rest.endswith(")"):
                raise bad(f"$expand: {item[:50]!r} lacks its ')'", "$expand")
            inner: dict[str, str] = {}
            for part in _split_top(rest[:-1], ";", "$expand"):
                key, eq, value = part.partition("=")
                if not eq or key.strip() in inner:
                    raise bad(f"$expand: bad option {part[:50]!r}", "$expand")
                inner[key.strip()] = value
            options = parse_options(inner, depth=depth + 1)
        else:
            options = Options()
        out.append(Expand(head.strip(), options))
    return out
