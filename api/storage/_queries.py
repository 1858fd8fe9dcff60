"""Every InfluxQL statement of the API, built from validated values only: nothing a client
sends can alter a query. No other module of ``api`` holds InfluxQL (a test greps for it).

Two layers, both always applied:

1. every value is validated first, against a pattern or an enum (ids: ``ID_RE``; names:
   ``NAME_RE``; aggregates: :data:`~api._params.AGGREGATES`; windows:
   :data:`~api._params.WINDOW_RE`; durations of the settings: :data:`DURATION_RE`; times:
   parsed datetimes rendered as integer nanoseconds);
2. every identifier is then double-quoted and every string single-quoted with the quote and
   the backslash escaped, so even a value that slipped past a pattern stays a literal.

InfluxQL has no bind parameters in 1.x's ``/query`` for identifiers (``$params`` cover only
values), hence the explicit quoting.

::

    statement                        used by                        reads
    show_measurements()              warm-up                        the measurement names
    select_latest(m, window, n)      warm-up                        newest point per series
    SeriesQuery.render()             /v1/history, resources         one field, raw or windowed
    select_entity_history(...)       NGSI-LD temporal               fields of one series
    ObservationQuery.render()        SensorThings Observations      one field of one series,
                                                                    filtered, paged, counted
    select_completeness(...)         completeness, gap repair       bookkeeping per gateway
    select_previous_max_seq(...)     gap repair                     where a hole may start
    select_present_seqs(...)         gap repair                     the seqs of one gateway
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from api._params import AGGREGATES, Aggregate, window_ns
from telemetry import BOOKKEEPING_MEASUREMENT, ID_RE, NAME_RE, completeness_query

__all__ = [
    "DURATION_RE",
    "FieldCondition",
    "FieldFilter",
    "ObservationQuery",
    "SeriesQuery",
    "quote_ident",
    "quote_string",
    "select_completeness",
    "select_entity_history",
    "select_latest",
    "select_present_seqs",
    "select_previous_max_seq",
    "select_replay",
    "show_measurements",
]

TAG_VALUE_RE: Final = re.compile(r"[A-Za-z0-9._:-]{1,64}")
#: A duration of the settings (``warm_window``, ``completeness_window``): 1s .. 999999w.
DURATION_RE: Final = re.compile(r"([1-9][0-9]{0,5})([smhdw])")
_UNIT_S: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def quote_ident(name: str) -> str:
    """``"name"`` with backslash and double quote escaped."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_string(value: str) -> str:
    """``'value'`` with backslash and single quote escaped."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _check(pattern: re.Pattern[str], value: str, what: str) -> str:
    if not pattern.fullmatch(value):
        raise ValueError(f"{what} {value!r} must match {pattern.pattern}")
    return value


def _duration(value: str) -> str:
    return _check(DURATION_RE, value, "duration")


def _seconds(duration: str) -> int:
    return int(_duration(duration)[:-1]) * _UNIT_S[duration[-1]]


def _positive(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive integer, not {value!r}")
    return value


def _settle(settle_s: float) -> str:
    return f"{round(float(settle_s) * 1000)}ms"


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


# -- live state warm-up ----------------------------------------------------------------------


def show_measurements() -> str:
    """The measurements the database holds."""
    return "SHOW MEASUREMENTS"


def select_latest(measurement: str, window: str, max_series: int | None = None) -> str:
    """The newest point of every series of ``measurement`` newer than ``window`` (of at most
    ``max_series`` series)."""
    _check(NAME_RE, measurement, "measurement")
    slimit = "" if max_series is None else f" SLIMIT {_positive(max_series, 'max_series')}"
    return (
        f"SELECT * FROM {quote_ident(measurement)} "  # noqa: S608
        f"WHERE time > now() - {_duration(window)} GROUP BY * ORDER BY time DESC LIMIT 1"
        f"{slimit}"
    )


# -- history ----------------------------------------------------------------------------------


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


def select_entity_history(
    *,
    measurement: str,
    gateway: str,
    device: str,
    tags: Mapping[str, str],
    fields: Sequence[str],
    after_ns: int | None = None,
    start_ns: int | None = None,
    end_ns: int | None = None,
    last: int | None = None,
    limit: int,
) -> str:
    """``fields`` of exactly one series (every tag given; ``""`` for a tag it lacks).

    Time: ``time > after_ns``, ``time >= start_ns``, ``time < end_ns`` (each when given).
    ``last``: the newest ``last`` points, newest first; else the oldest ``limit``, oldest
    first.
    """
    _check(NAME_RE, measurement, "measurement")
    if not fields:
        raise ValueError("no fields")
    where = (f'"gateway" = {quote_string(_check(ID_RE, gateway, "gateway"))} AND '
             f'"device" = {quote_string(_check(ID_RE, device, "device"))}')
    for key, value in sorted(tags.items()):
        where += f" AND {quote_ident(_check(NAME_RE, key, 'tag'))} = {quote_string(value)}"
    if after_ns is not None:
        where += f" AND time > {int(after_ns)}"
    if start_ns is not None:
        where += f" AND time >= {int(start_ns)}"
    if end_ns is not None:
        where += f" AND time < {int(end_ns)}"
    select = ", ".join(quote_ident(_check(NAME_RE, f, "field")) for f in fields)
    order = (f"ORDER BY time DESC LIMIT {int(last)}" if last
             else f"ORDER BY time ASC LIMIT {int(limit)}")
    return f"SELECT {select} FROM {quote_ident(measurement)} WHERE {where} {order}"  # noqa: S608


# -- timeline replay --------------------------------------------------------------------------


def select_replay(measurement: str, start_ns: int, end_ns: int, step_s: int, max_series: int,
                  ) -> str:
    """The timeline replay's statement for one measurement, grouped by time step and series:
    the vehicles' last position (``Vehicle``) or the links' mean speed over their lanes
    (``TrafficFlowObserved``); every value is an int or a constant of this function."""
    if measurement == "Vehicle":
        select = 'last("latitude") AS "lat", last("longitude") AS "lon"'
    elif measurement == "TrafficFlowObserved":
        select = 'mean("averageVehicleSpeed") AS "speed"'
    else:
        raise ValueError(f"no replay of {measurement!r}")
    return (
        f"SELECT {select} FROM {quote_ident(measurement)} "  # noqa: S608
        f"WHERE time >= {int(start_ns)} AND time < {int(end_ns)} "
        f'GROUP BY time({int(step_s)}s), "gateway", "device" fill(none) '
        f"SLIMIT {int(max_series)}"
    )



# -- SensorThings Observations ---------------------------------------------------------------

_COMPARISONS: Final = frozenset({"=", "!=", ">", ">=", "<", "<="})


@dataclass(frozen=True, slots=True)
class FieldCondition:
    """``<field> <op> <value>``: the value a number, a string or a boolean."""

    op: str
    value: float | str | bool

    def render(self, field: str) -> str:
        if self.op not in _COMPARISONS:
            raise ValueError(f"comparison {self.op!r} is not one of {sorted(_COMPARISONS)}")
        value = self.value
        if isinstance(value, bool):
            literal = "true" if value else "false"
        elif isinstance(value, int | float):
            number = float(value)
            if number != number or number in (float("inf"), float("-inf")):
                raise ValueError("a field condition needs a finite number")
            literal = repr(number)
        else:
            literal = quote_string(str(value))
        return f"{quote_ident(field)} {self.op} {literal}"


@dataclass(frozen=True, slots=True)
class FieldFilter:
    """Conditions on the field joined by ``AND`` or ``OR`` (nested; depth and size are
    bounded by the caller)."""

    join: str
    items: tuple[FieldFilter | FieldCondition, ...]

    def render(self, field: str) -> str:
        if self.join not in ("AND", "OR") or not self.items:
            raise ValueError("a field filter joins one or more items with AND or OR")
        return "(" + f" {self.join} ".join(item.render(field) for item in self.items) + ")"


@dataclass(frozen=True, kw_only=True, slots=True)
class ObservationQuery:
    """One field of exactly one series (every tag given; ``""`` for a tag it lacks), with
    time bounds (``(op, ns)``, ANDed: InfluxQL has no OR on time) and a value filter;
    newest or oldest first, ``LIMIT``/``OFFSET``; or its ``count``."""

    measurement: str
    gateway: str
    device: str
    tags: Mapping[str, str]
    field: str
    times: Sequence[tuple[str, int]] = ()
    value: FieldFilter | FieldCondition | None = None
    descending: bool = False
    limit: int = 100
    offset: int = 0

    def _where(self) -> str:
        where = (f'"gateway" = {quote_string(_check(ID_RE, self.gateway, "gateway"))} AND '
                 f'"device" = {quote_string(_check(ID_RE, self.device, "device"))}')
        for key, value in sorted(self.tags.items()):
            where += f" AND {quote_ident(_check(NAME_RE, key, 'tag'))} = {quote_string(value)}"
        for op, ns in self.times:
            if op not in _COMPARISONS - {"!="}:  # "=": one instant
                raise ValueError(f"time comparison {op!r}")
            where += f" AND time {op} {int(ns)}"
        if self.value is not None:
            where += " AND " + self.value.render(_check(NAME_RE, self.field, "field"))
        return where

    def render(self) -> str:
        _check(NAME_RE, self.measurement, "measurement")
        field = quote_ident(_check(NAME_RE, self.field, "field"))
        order = "DESC" if self.descending else "ASC"
        limit, offset = _positive(int(self.limit), "limit"), int(self.offset)
        if offset < 0:
            raise ValueError("offset must not be negative")
        return (f"SELECT {field} FROM {quote_ident(self.measurement)} "  # noqa: S608
                f"WHERE {self._where()} ORDER BY time {order} LIMIT {limit} OFFSET {offset}")

    def render_count(self) -> str:
        _check(NAME_RE, self.measurement, "measurement")
        field = quote_ident(_check(NAME_RE, self.field, "field"))
        return (f'SELECT count({field}) AS "count" FROM '  # noqa: S608
                f"{quote_ident(self.measurement)} WHERE {self._where()}")


# -- ingest bookkeeping: completeness and gap repair ------------------------------------------


def select_completeness(window: str, settle_s: float) -> str:
    """Per gateway over the completeness window (``window`` ending ``settle_s`` ago): batches
    received, lowest and highest seq, readings (:func:`telemetry.completeness_query`)."""
    return completeness_query(since=f"now() - {_duration(window)}",
                              until=f"now() - {_settle(settle_s)}")


def select_previous_max_seq(window: str) -> str:
    """Per gateway, the highest seq of the window before the completeness window."""
    since = f"now() - {_duration(window)}"
    before = f"now() - {2 * _seconds(window)}s"
    return (
        f'SELECT max("seq") AS "max_seq" FROM {quote_ident(BOOKKEEPING_MEASUREMENT)} '  # noqa: S608
        f'WHERE time >= {before} AND time < {since} GROUP BY "gateway"'
    )


def select_present_seqs(gateway: str, window: str, settle_s: float) -> str:
    """The distinct seqs of one gateway's batches in the completeness window."""
    return (
        f'SELECT distinct("seq") FROM {quote_ident(BOOKKEEPING_MEASUREMENT)} '  # noqa: S608
        f"WHERE time >= now() - {_duration(window)} AND time < now() - {_settle(settle_s)} "
        f'AND "gateway" = {quote_string(_check(ID_RE, gateway, "gateway"))}'
    )
