"""History: one field of one device (or of every device of an area), raw or per window."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Final

import msgspec
from fastapi import APIRouter, Query
from starlette.responses import Response

from api._deps import ServicesDep, Viewer
from api._encoding import doc, json_response
from api._errors import BadParameter
from api._influxql import AGGREGATES, WINDOW_RE, Aggregate, SeriesQuery, window_ns
from api._live import iso
from api._params import ID_PATTERN, NAME_PATTERN, GatewayQuery
from api._services import Services
from telemetry import MEASUREMENTS, RESERVED_FIELD_NAMES

__all__ = ["HistoryOut", "Point", "router", "run_series", "time_range"]

router = APIRouter(prefix="/v1", tags=["history"])

_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MIN: Final = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
_MAX: Final = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)
_DAY_NS: Final = 86_400 * 10**9

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


class Point(msgspec.Struct, array_like=False):
    time: str
    value: float | int | bool | str | None


class HistoryOut(msgspec.Struct):
    measurement: str
    field: str
    unit: str | None
    aggregate: str | None
    window: str | None
    start: str
    end: str
    devices: list[str]
    points: list[Point]


def _ns(value: dt.datetime, name: str) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    if not _MIN <= value < _MAX:
        raise BadParameter(f"{name} must be between 2000-01-01 and 2100-01-01", parameter=name)
    return (value - _EPOCH) // dt.timedelta(microseconds=1) * 1000


def time_range(
    services: Services, start: dt.datetime | None, end: dt.datetime | None
) -> tuple[int, int]:
    end_ns = _ns(end, "end") if end is not None else _ns(dt.datetime.now(dt.UTC), "end")
    start_ns = _ns(start, "start") if start is not None else end_ns - _DAY_NS
    if end_ns <= start_ns:
        raise BadParameter("end must be after start", parameter="end")
    if end_ns - start_ns > services.settings.max_range_days * _DAY_NS:
        raise BadParameter(
            f"range longer than {services.settings.max_range_days} days", parameter="start"
        )
    return start_ns, end_ns


def _unit(measurement: str, field: str) -> str | None:
    spec = MEASUREMENTS.get(measurement)
    if spec is None or field not in spec.fields:
        return None
    return spec.fields[field].unit


async def run_series(
    services: Services,
    *,
    measurement: str,
    field: str,
    devices: list[tuple[str | None, str]],
    start_ns: int,
    end_ns: int,
    window: str | None,
    aggregate: Aggregate | None,
    lane: str | None = None,
) -> HistoryOut:
    if field in RESERVED_FIELD_NAMES:
        raise BadParameter(f"field {field!r} is reserved", parameter="field")
    max_points = services.settings.max_points
    limit: int | None = None
    if window is not None:
        points = -(-(end_ns - start_ns) // window_ns(window))
        if points > max_points:
            raise BadParameter(
                f"{points} windows of {window} exceed the limit of {max_points} points; "
                "use a wider window or a shorter range",
                parameter="window",
            )
    elif aggregate is None:
        limit = max_points + 1
    query = SeriesQuery(
        measurement=measurement, field=field, devices=devices, start_ns=start_ns,
        end_ns=end_ns, aggregate=aggregate, window=window, lane=lane, limit=limit,
    )
    series = await services.influx.query(query.render())
    rows = [row for s in series for row in s.values]
    if limit is not None and len(rows) > max_points:
        raise BadParameter(
            f"more than {max_points} raw points in the range; give a window "
            "(for example window=5m&aggregate=mean) or a shorter range",
            parameter="window",
        )
    return HistoryOut(
        measurement=measurement,
        field=field,
        unit=_unit(measurement, field),
        aggregate=aggregate or ("mean" if window else None),
        window=window,
        start=iso(start_ns),
        end=iso(end_ns),
        devices=[d if g is None else f"{g}/{d}" for g, d in devices],
        points=[Point(iso(int(row[0])), row[1]) for row in rows],
    )


@router.get("/history", response_model=None, responses=doc(HistoryOut),
            summary="One field of one device over time, raw or aggregated per window")
async def history(
    services: ServicesDep,
    _caller: Viewer,
    device: Annotated[str, Query(pattern=ID_PATTERN, description="Device id")],
    measurement: Annotated[str, Query(pattern=NAME_PATTERN, description="Measurement")],
    field: Annotated[str, Query(pattern=NAME_PATTERN, description="Field name")],
    gateway: GatewayQuery = None,
    start: StartQuery = None,
    end: EndQuery = None,
    window: WindowQuery = None,
    aggregate: AggregateQuery = None,
    lane: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9._:-]{1,64}$")] = None,
) -> Response:
    start_ns, end_ns = time_range(services, start, end)
    out = await run_series(
        services, measurement=measurement, field=field, devices=[(gateway, device)],
        start_ns=start_ns, end_ns=end_ns, window=window, aggregate=aggregate, lane=lane,
    )
    return json_response(out)
