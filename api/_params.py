"""What a request may say, validated: ids and names, paging, time ranges, windows.

- the patterns of ids and names (those of the wire contract), as ``Annotated`` query and
  path parameters;
- :class:`Page`: one page of a list (``items``, ``total``, ``offset``, ``limit``,
  ``next_offset``), and :data:`Offset`/:data:`Limit` to ask for one;
- time: RFC 3339 ``start``/``end`` into a bounded nanosecond range (:func:`time_range`),
  aggregation windows and aggregates (what :mod:`api.storage` may put into a query), and
  nanoseconds back to RFC 3339 (:func:`iso`).
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Sequence
from typing import Annotated, Final, Generic, Literal, Self, TypeVar

import msgspec
from fastapi import Path, Query

from api._errors import BadParameter, ProblemError

__all__ = [
    "AGGREGATES",
    "AREA_PATTERN",
    "ID_PATTERN",
    "NAME_PATTERN",
    "WINDOW_RE",
    "Aggregate",
    "AggregateQuery",
    "AreaQuery",
    "DevicePath",
    "DeviceQuery",
    "EndQuery",
    "GatewayPath",
    "GatewayQuery",
    "Limit",
    "Offset",
    "Page",
    "StartQuery",
    "WindowQuery",
    "iso",
    "nanoseconds",
    "time_range",
    "window_ns",
]

#: Gateway and device ids (telemetry.ID_RE), measurement and field names (telemetry.NAME_RE).
ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
NAME_PATTERN: Final = r"^[A-Za-z][A-Za-z0-9_]{0,63}$"
#: Areas are free-form labels in births; queries accept a conservative subset.
AREA_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9 ._:-]{0,63}$"

GatewayPath = Annotated[str, Path(pattern=ID_PATTERN, description="Gateway id")]
DevicePath = Annotated[str, Path(pattern=ID_PATTERN, description="Device id")]
GatewayQuery = Annotated[
    str | None, Query(pattern=ID_PATTERN, description="Only this gateway")
]
DeviceQuery = Annotated[str | None, Query(pattern=ID_PATTERN, description="Only this device")]
AreaQuery = Annotated[str | None, Query(pattern=AREA_PATTERN, description="Only this area")]

# -- paging -----------------------------------------------------------------------------------

Offset = Annotated[int, Query(ge=0, le=10_000_000, description="Items to skip")]
Limit = Annotated[int, Query(ge=1, le=1000, description="Items per page")]

T = TypeVar("T")


class Page(msgspec.Struct, Generic[T]):
    """One page of a list; ``next_offset`` is ``null`` on the last page.

    Each list declares its own page type (``class VehiclePage(Page[VehicleOut]): pass``), so
    the OpenAPI document names it.
    """

    items: list[T]
    total: int
    offset: int
    limit: int
    next_offset: int | None

    @classmethod
    def of(cls, rows: Sequence[T], offset: int, limit: int) -> Self:
        """The page of ``rows`` (the whole filtered list) at ``offset``."""
        total = len(rows)
        nxt = offset + limit if offset + limit < total else None
        return cls(list(rows[offset : offset + limit]), total, offset, limit, nxt)


# -- time -------------------------------------------------------------------------------------

_NS: Final = 1_000_000_000
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MIN: Final = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
_MAX: Final = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)
_DAY_NS: Final = 86_400 * _NS

Aggregate = Literal["mean", "min", "max", "sum", "count", "last"]
AGGREGATES: Final[tuple[Aggregate, ...]] = ("mean", "min", "max", "sum", "count", "last")
#: A GROUP BY time() window: 1s .. 99999d.
WINDOW_RE: Final = re.compile(r"([1-9][0-9]{0,4})(s|m|h|d)")
_UNIT_NS: Final = {"s": _NS, "m": 60 * _NS, "h": 3600 * _NS, "d": 86400 * _NS}

WindowQuery = Annotated[
    str | None,
    Query(pattern=f"^{WINDOW_RE.pattern}$",
          description="Aggregation window: 30s, 5m, 1h, 1d (omit for raw points)"),
]
AggregateQuery = Annotated[
    Aggregate | None,
    Query(description=f"One of {', '.join(AGGREGATES)}; default mean when a window is given"),
]
StartQuery = Annotated[
    dt.datetime | None, Query(description="RFC 3339 start (inclusive); default end - 24 h")
]
EndQuery = Annotated[dt.datetime | None, Query(description="RFC 3339 end (exclusive); default now")]


#: The last second :func:`iso` formatted: the readings of a batch, and of the gateways
#: ticking together, mostly share it (strftime + gmtime were a fifth of a live reading's cost).
_last_second: tuple[int, str] = (-1, "")


def iso(ns: int) -> str:
    """RFC 3339 UTC with milliseconds from integer nanoseconds."""
    global _last_second
    seconds, rest = divmod(ns, _NS)
    last = _last_second  # one tuple: consistent even if another thread replaces it
    if last[0] == seconds:
        prefix = last[1]
    else:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _last_second = (seconds, prefix)
    return f"{prefix}.{rest // 1_000_000:03d}Z"


def window_ns(window: str) -> int:
    match = WINDOW_RE.fullmatch(window)
    if match is None:
        raise ValueError(f"window {window!r} must match {WINDOW_RE.pattern}")
    return int(match.group(1)) * _UNIT_NS[match.group(2)]


def nanoseconds(
    value: dt.datetime, name: str, *, error: type[ProblemError] = BadParameter
) -> int:
    """``value`` (UTC when naive) as integer nanoseconds; ``error`` naming the parameter
    ``name`` when it is outside 2000-01-01 .. 2100-01-01."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    if not _MIN <= value < _MAX:
        raise error(f"{name} must be between 2000-01-01 and 2100-01-01", parameter=name)
    return (value - _EPOCH) // dt.timedelta(microseconds=1) * 1000


def time_range(
    start: dt.datetime | None, end: dt.datetime | None, *, max_days: int
) -> tuple[int, int]:
    """``[start, end)`` in nanoseconds: end defaults to now, start to end - 24 h; the range
    must be positive and at most ``max_days`` long."""
    end_ns = nanoseconds(end if end is not None else dt.datetime.now(dt.UTC), "end")
    start_ns = nanoseconds(start, "start") if start is not None else end_ns - _DAY_NS
    if end_ns <= start_ns:
        raise BadParameter("end must be after start", parameter="end")
    if end_ns - start_ns > max_days * _DAY_NS:
        raise BadParameter(f"range longer than {max_days} days", parameter="start")
    return start_ns, end_ns
