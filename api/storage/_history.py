"""History answers: one field of some devices over a time range, raw or per window, bounded.

A request that would return more than ``max_points`` points is refused before InfluxDB is
asked (windows) or as soon as the answer shows it (raw points, read with ``LIMIT
max_points + 1``), with a 400 naming ``window`` and saying how to narrow it.
"""

from __future__ import annotations

import msgspec

from api._errors import BadParameter
from api._params import Aggregate, iso, window_ns
from api.storage._influx import InfluxClient
from api.storage._queries import SeriesQuery
from telemetry import MEASUREMENTS, RESERVED_FIELD_NAMES

__all__ = ["HistoryOut", "Point", "read_series"]


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


def _unit(measurement: str, field: str) -> str | None:
    spec = MEASUREMENTS.get(measurement)
    if spec is None or field not in spec.fields:
        return None
    return spec.fields[field].unit


async def read_series(
    influx: InfluxClient,
    *,
    max_points: int,
    measurement: str,
    field: str,
    devices: list[tuple[str | None, str]],
    start_ns: int,
    end_ns: int,
    window: str | None,
    aggregate: Aggregate | None,
    lane: str | None = None,
) -> HistoryOut:
    """One field of ``devices`` in ``[start_ns, end_ns)``; :class:`BadParameter` past
    ``max_points`` or for a reserved field."""
    if field in RESERVED_FIELD_NAMES:
        raise BadParameter(f"field {field!r} is reserved", parameter="field")
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
    series = await influx.query(query.render())
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
