"""InfluxQL built from validated values only: nothing a client sends can alter a query.

Two layers, both always applied:

1. every user value is validated first, against a pattern or an enum (ids: ``ID_RE``; names:
   ``NAME_RE``; aggregates: :data:`AGGREGATES`; windows: :data:`WINDOW_RE`; times: parsed
   datetimes rendered as integer nanoseconds);
2. every identifier is then double-quoted and every string single-quoted with the quote and
   the backslash escaped, so even a value that slipped past a pattern stays a literal.

InfluxQL has no bind parameters in 1.x's ``/query`` for identifiers (``$params`` cover only
values), hence the explicit quoting.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from telemetry import ID_RE, NAME_RE

__all__ = [
    "AGGREGATES",
    "WINDOW_RE",
    "Aggregate",
    "SeriesQuery",
    "quote_ident",
    "quote_string",
    "window_ns",
]

Aggregate = Literal["mean", "min", "max", "sum", "count", "last"]
AGGREGATES: Final[tuple[Aggregate, ...]] = ("mean", "min", "max", "sum", "count", "last")
#: A GROUP BY time() window: 1s .. 99999d.
WINDOW_RE: Final = re.compile(r"([1-9][0-9]{0,4})(s|m|h|d)")
TAG_VALUE_RE: Final = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_UNIT_NS: Final = {"s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9, "d": 86400 * 10**9}


def quote_ident(name: str) -> str:
    """``"name"`` with backslash and double quote escaped."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_string(value: str) -> str:
    """``'value'`` with backslash and single quote escaped."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def window_ns(window: str) -> int:
    match = WINDOW_RE.fullmatch(window)
    if match is None:
        raise ValueError(f"window {window!r} must match {WINDOW_RE.pattern}")
    return int(match.group(1)) * _UNIT_NS[match.group(2)]


def _check(pattern: re.Pattern[str], value: str, what: str) -> str:
    if not pattern.fullmatch(value):
        raise ValueError(f"{what} {value!r} must match {pattern.pattern}")
    return value


def device_clause(devices: Iterable[tuple[str | None, str]]) -> str:
    """``("gateway" = 'g' AND "device" = 'd') OR ...`` for validated (gateway, device) pairs."""
    parts = []
    for gateway, device in devices:
        _check(ID_RE, device, "device")
        part = f'"device" = {quote_string(device)}'
        if gateway is not None:
            _check(ID_RE, gateway, "gateway")
            part = f'("gateway" = {quote_string(gateway)} AND {part})'
        parts.append(part)
    if not parts:
        raise ValueError("no devices")
    return "(" + " OR ".join(parts) + ")"


@dataclass(frozen=True, kw_only=True, slots=True)
class SeriesQuery:
    """One field of one measurement for some devices, raw or aggregated per window."""

    measurement: str
    field: str
    devices: Sequence[tuple[str | None, str]]
    start_ns: int
    end_ns: int
    aggregate: Aggregate | None = None
    window: str | None = None
    lane: str | None = None
    limit: int | None = None

    def render(self) -> str:
        _check(NAME_RE, self.measurement, "measurement")
        _check(NAME_RE, self.field, "field")
        if self.aggregate is not None and self.aggregate not in AGGREGATES:
            raise ValueError(f"aggregate {self.aggregate!r} is not one of {AGGREGATES}")
        start, end = int(self.start_ns), int(self.end_ns)
        where = f"{device_clause(self.devices)} AND time >= {start} AND time < {end}"
        if self.lane is not None:
            _check(TAG_VALUE_RE, self.lane, "lane")
            where += f' AND "lane" = {quote_string(self.lane)}'
        field = quote_ident(self.field)
        measurement = quote_ident(self.measurement)
        if self.window is not None:
            window_ns(self.window)
            agg = self.aggregate or "mean"
            select = f"{agg}({field}) AS \"value\""
            tail = f" GROUP BY time({self.window}) fill(none)"
        elif self.aggregate is not None:
            select = f"{self.aggregate}({field}) AS \"value\""
            tail = ""
        else:
            select = f'{field} AS "value"'
            tail = ""
        if self.limit is not None:
            tail += f" LIMIT {int(self.limit)}"
        return f"SELECT {select} FROM {measurement} WHERE {where}{tail}"  # noqa: S608
