"""Transport views of the live state: vehicles, and the congestion of a traffic link.

Congestion of a link compares its mean speed with its free-flow speed (``meta.freeFlowSpeed``
in the device's birth, km/h, else the ``free_flow_speed_kmh`` setting)::

    speed / free-flow    >= 0.75      0.5 - 0.75    0.3 - 0.5    < 0.3
    congestionLevel      free         moderate      heavy        severe

Shared by the REST routes (``/v1/transport``) and the GTFS-Realtime feed.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from api.state._live import LiveState

__all__ = [
    "Congestion",
    "GeoPoint",
    "VehicleOut",
    "as_float",
    "as_int",
    "as_str",
    "congestion_level",
    "vehicles",
]

Congestion = Literal["free", "moderate", "heavy", "severe", "unknown"]


def congestion_level(speed: float | None, free_flow: float) -> tuple[Congestion, float | None]:
    if speed is None or free_flow <= 0:
        return "unknown", None
    ratio = speed / free_flow
    if ratio >= 0.75:
        return "free", ratio
    if ratio >= 0.5:
        return "moderate", ratio
    if ratio >= 0.3:
        return "heavy", ratio
    return "severe", ratio


def as_float(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def as_int(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def as_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


class GeoPoint(msgspec.Struct):
    lat: float
    lon: float


class VehicleOut(msgspec.Struct):
    id: str
    gateway: str
    device: str
    location: GeoPoint | None
    speed: float | None
    heading: float | None
    routeId: str | None
    tripId: str | None
    passengerCount: int | None
    area: str | None
    time: str
    ts_ns: int


def vehicles(live: LiveState, area: str | None, route: str | None) -> list[VehicleOut]:
    """The latest state of every vehicle (in ``area``, on ``route``), by series order."""
    out = []
    for r in live.measurement("Vehicle"):
        if area is not None and r.area != area:
            continue
        f = r.fields
        route_id = as_str(f.get("routeId"))
        if route is not None and route_id != route:
            continue
        lat, lon = as_float(f.get("latitude")), as_float(f.get("longitude"))
        point = GeoPoint(lat, lon) if lat is not None and lon is not None else None
        out.append(
            VehicleOut(
                id=f"{r.gateway}:{r.device}", gateway=r.gateway, device=r.device,
                location=point, speed=as_float(f.get("speed")),
                heading=as_float(f.get("heading")), routeId=route_id,
                tripId=as_str(f.get("tripId")), passengerCount=as_int(f.get("passengerCount")),
                area=r.area, time=r.time, ts_ns=r.ts_ns,
            )
        )
    return out
