"""The city as it was: vehicles' positions and traffic links' speeds per time step, for the
dashboard's timeline replay (``GET /v1/transport/replay``).

Two statements (:func:`api.storage._queries.select_replay`), one per measurement, each
grouped by time step and by series: the vehicles' last latitude and longitude, the links' mean
speed (lanes averaged).

The answer is columnar (one list per series, one slot per step, ``null`` where the series had
no point in the step), so six hours of a city of a few hundred links at 5-minute steps is a
few hundred kilobytes, not one object per point. Bounded: at most ``max_steps`` steps and
``max_series`` series per measurement (``SLIMIT``); a range past them is a 400, not a slow
query.
"""

from __future__ import annotations

from typing import Final

import msgspec

from api._errors import BadParameter
from api._params import iso
from api.storage._influx import InfluxClient
from api.storage._queries import select_replay

__all__ = ["ReplayFrames", "ReplayLink", "ReplayVehicle", "read_replay"]

_VEHICLE: Final = "Vehicle"
_LINK: Final = "TrafficFlowObserved"


class ReplayVehicle(msgspec.Struct):
    id: str
    gateway: str
    device: str
    #: Per step: [lat, lon] of the vehicle's last position in the step, or null.
    positions: list[tuple[float, float] | None]


class ReplayLink(msgspec.Struct):
    id: str
    gateway: str
    device: str
    #: Per step: the mean speed over the step's readings (all lanes), km/h, or null.
    speed: list[float | None]
    #: The link's free-flow speed and, per step, the congestion level of that speed against
    #: it (``unknown`` where the step has no speed); filled by the route from the inventory.
    freeFlowSpeed: float | None = None
    congestionLevel: list[str] = []


class ReplayFrames(msgspec.Struct):
    start: str
    end: str
    step_s: int
    #: The start of each step (ISO 8601, UTC); the lists of every series follow it.
    times: list[str]
    vehicles: list[ReplayVehicle]
    links: list[ReplayLink]


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and value == value:
        return float(value)
    return None


async def read_replay(
    influx: InfluxClient, *, start_ns: int, end_ns: int, step_s: int, max_steps: int,
    max_series: int,
) -> ReplayFrames:
    """Vehicles' positions and links' speeds in ``[start_ns, end_ns)``, step by step. The
    steps are aligned on multiples of ``step_s`` since the epoch (InfluxDB's ``GROUP BY
    time`` buckets): the first starts at or before ``start_ns``. More than ``max_steps``
    steps is a :class:`BadParameter`, before any query."""
    step_ns = step_s * 10**9
    first = start_ns - start_ns % step_ns
    n = -(-(end_ns - first) // step_ns)
    if n > max_steps:
        raise BadParameter(
            f"{n} steps of {step_s} s exceed the limit of {max_steps}; use a longer step or a "
            "shorter range", parameter="step",
        )
    times = [iso(first + i * step_ns) for i in range(n)]

    def slot(t: object) -> int | None:
        if not isinstance(t, int):
            return None
        i = (t - first) // step_ns
        return i if 0 <= i < n else None

    vehicles: list[ReplayVehicle] = []
    for s in await influx.query(select_replay(_VEHICLE, start_ns, end_ns, step_s, max_series)):
        gw, dev = s.tags.get("gateway", ""), s.tags.get("device", "")
        positions: list[tuple[float, float] | None] = [None] * n
        cols = {c: k for k, c in enumerate(s.columns)}
        for row in s.values:
            i = slot(row[0])
            lat, lon = _number(row[cols["lat"]]), _number(row[cols["lon"]])
            if i is not None and lat is not None and lon is not None:
                positions[i] = (lat, lon)
        vehicles.append(ReplayVehicle(f"{gw}:{dev}", gw, dev, positions))
    links: list[ReplayLink] = []
    for s in await influx.query(select_replay(_LINK, start_ns, end_ns, step_s, max_series)):
        gw, dev = s.tags.get("gateway", ""), s.tags.get("device", "")
        speed: list[float | None] = [None] * n
        cols = {c: k for k, c in enumerate(s.columns)}
        for row in s.values:
            i = slot(row[0])
            if i is not None:
                speed[i] = _number(row[cols["speed"]])
        links.append(ReplayLink(f"{gw}:{dev}", gw, dev, speed))
    return ReplayFrames(
        start=iso(start_ns), end=iso(end_ns), step_s=step_s, times=times, vehicles=vehicles,
        links=links,
    )
