"""Transport: vehicles, traffic links with congestion, parking, and GTFS-Realtime.

Field names follow the Smart Data Models (``Vehicle``, ``TrafficFlowObserved``,
``OffStreetParking``). Congestion of a link compares its mean speed with its free-flow speed
(``meta.freeFlowSpeed`` in the device's birth, km/h, else the ``free_flow_speed_kmh``
setting)::

    speed / free-flow    >= 0.75      0.5 - 0.75    0.3 - 0.5    < 0.3
    congestionLevel      free         moderate      heavy        severe

The GTFS-Realtime feed (``/v1/gtfs-rt/vehicle-positions``) is a FULL_DATASET
``FeedMessage`` (version 2.0) with one ``VehiclePosition`` entity per vehicle; the entity id is
``<gateway>:<device>`` and stays the same from one fetch to the next. Speed is converted from
km/h to m/s as GTFS-Realtime requires.
"""

from __future__ import annotations

import importlib
import time
from typing import Annotated, Any, Final, Literal

import msgspec
from fastapi import APIRouter, Query
from google.transit import gtfs_realtime_pb2
from starlette.responses import Response

from api._deps import ServicesDep, Viewer
from api._encoding import doc, json_response
from api._live import Latest
from api._params import AreaQuery, Limit, Offset
from api._services import Services

__all__ = ["congestion_level", "router", "vehicle_feed"]

router = APIRouter(prefix="/v1", tags=["transport"])

_FEED_MEDIA: Final = "application/x-protobuf"
# protobuf ships no type stubs here; the JSON mapping is used through Any.
json_format: Any = importlib.import_module("google.protobuf.json_format")
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


def _num(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _int(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _str(value: object) -> str | None:
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


class LinkOut(msgspec.Struct):
    id: str
    gateway: str
    device: str
    lane: str | None
    intensity: float | None
    averageVehicleSpeed: float | None
    occupancy: float | None
    freeFlowSpeed: float
    speedRatio: float | None
    congestionLevel: str
    congested: bool
    location: GeoPoint | None
    area: str | None
    time: str


class ParkingOut(msgspec.Struct):
    id: str
    gateway: str
    device: str
    availableSpotNumber: int | None
    totalSpotNumber: int | None
    occupancy: float | None
    location: GeoPoint | None
    area: str | None
    time: str


class VehiclePage(msgspec.Struct):
    items: list[VehicleOut]
    total: int
    offset: int
    limit: int
    next_offset: int | None


class LinkPage(msgspec.Struct):
    items: list[LinkOut]
    total: int
    offset: int
    limit: int
    next_offset: int | None


class ParkingPage(msgspec.Struct):
    items: list[ParkingOut]
    total: int
    offset: int
    limit: int
    next_offset: int | None


def _device_point(services: Services, r: Latest) -> GeoPoint | None:
    gw = services.inventory.gateways.get(r.gateway)
    dev = gw.devices.get(r.device) if gw is not None else None
    if dev is not None and dev.location is not None:
        return GeoPoint(dev.location.lat, dev.location.lon)
    return None


def _vehicles(services: Services, area: str | None, route: str | None) -> list[VehicleOut]:
    out = []
    for r in services.live.measurement("Vehicle"):
        if area is not None and r.area != area:
            continue
        f = r.fields
        route_id = _str(f.get("routeId"))
        if route is not None and route_id != route:
            continue
        lat, lon = _num(f.get("latitude")), _num(f.get("longitude"))
        point = GeoPoint(lat, lon) if lat is not None and lon is not None else None
        out.append(
            VehicleOut(
                id=f"{r.gateway}:{r.device}", gateway=r.gateway, device=r.device,
                location=point, speed=_num(f.get("speed")), heading=_num(f.get("heading")),
                routeId=route_id, tripId=_str(f.get("tripId")),
                passengerCount=_int(f.get("passengerCount")), area=r.area, time=r.time,
                ts_ns=r.ts_ns,
            )
        )
    return out


def _page(total: int, offset: int, limit: int) -> int | None:
    return offset + limit if offset + limit < total else None


RouteQuery = Annotated[str | None, Query(pattern=r"^[A-Za-z0-9._:-]{1,64}$")]


@router.get("/transport/vehicles", response_model=None, responses=doc(VehiclePage),
            summary="Latest position, speed, heading, route and occupancy of every vehicle")
async def vehicles(
    services: ServicesDep, _caller: Viewer, area: AreaQuery = None, route: RouteQuery = None,
    offset: Offset = 0, limit: Limit = 1000,
) -> Response:
    rows = _vehicles(services, area, route)
    return json_response(VehiclePage(rows[offset : offset + limit], len(rows), offset, limit,
                                      _page(len(rows), offset, limit)))


@router.get("/transport/links", response_model=None, responses=doc(LinkPage),
            summary="Traffic links: flow, speed, occupancy and congestion level")
async def links(
    services: ServicesDep,
    _caller: Viewer,
    area: AreaQuery = None,
    congestion: Annotated[Congestion | None, Query()] = None,
    offset: Offset = 0,
    limit: Limit = 1000,
) -> Response:
    rows = []
    for r in services.live.measurement("TrafficFlowObserved"):
        if area is not None and r.area != area:
            continue
        f = r.fields
        speed = _num(f.get("averageVehicleSpeed"))
        free = services.alerts.free_flow_speed(r.gateway, r.device)
        level, ratio = congestion_level(speed, free)
        if congestion is not None and level != congestion:
            continue
        lane = r.tags.get("lane")
        rows.append(
            LinkOut(
                id=f"{r.gateway}:{r.device}" + (f":{lane}" if lane else ""), gateway=r.gateway,
                device=r.device, lane=lane, intensity=_num(f.get("intensity")),
                averageVehicleSpeed=speed, occupancy=_num(f.get("occupancy")),
                freeFlowSpeed=free, speedRatio=ratio, congestionLevel=level,
                congested=level in ("heavy", "severe"), location=_device_point(services, r),
                area=r.area, time=r.time,
            )
        )
    return json_response(LinkPage(rows[offset : offset + limit], len(rows), offset, limit,
                                  _page(len(rows), offset, limit)))


@router.get("/transport/parking", response_model=None, responses=doc(ParkingPage),
            summary="Car parks: free and total spaces")
async def parking(
    services: ServicesDep, _caller: Viewer, area: AreaQuery = None, offset: Offset = 0,
    limit: Limit = 1000,
) -> Response:
    rows = []
    for r in services.live.measurement("OffStreetParking"):
        if area is not None and r.area != area:
            continue
        f = r.fields
        free, total = _int(f.get("availableSpotNumber")), _int(f.get("totalSpotNumber"))
        occupancy = _num(f.get("occupancy"))
        if occupancy is None and free is not None and total:
            occupancy = max(0.0, min(1.0, 1 - free / total))
        rows.append(
            ParkingOut(
                id=f"{r.gateway}:{r.device}", gateway=r.gateway, device=r.device,
                availableSpotNumber=free, totalSpotNumber=total, occupancy=occupancy,
                location=_device_point(services, r), area=r.area, time=r.time,
            )
        )
    return json_response(ParkingPage(rows[offset : offset + limit], len(rows), offset, limit,
                                     _page(len(rows), offset, limit)))


def vehicle_feed(services: Services, now_s: int | None = None) -> gtfs_realtime_pb2.FeedMessage:
    """A GTFS-Realtime FULL_DATASET FeedMessage of every vehicle with a position."""
    feed = gtfs_realtime_pb2.FeedMessage()
    feed.header.gtfs_realtime_version = "2.0"
    feed.header.incrementality = gtfs_realtime_pb2.FeedHeader.FULL_DATASET
    feed.header.timestamp = now_s if now_s is not None else int(time.time())
    for v in _vehicles(services, None, None):
        if v.location is None:
            continue
        entity = feed.entity.add()
        entity.id = v.id
        vp = entity.vehicle
        vp.vehicle.id = v.id
        vp.vehicle.label = v.device
        if v.tripId:
            vp.trip.trip_id = v.tripId
        if v.routeId:
            vp.trip.route_id = v.routeId
        vp.position.latitude = v.location.lat
        vp.position.longitude = v.location.lon
        if v.heading is not None:
            vp.position.bearing = v.heading
        if v.speed is not None:
            vp.position.speed = v.speed / 3.6
        vp.timestamp = v.ts_ns // 1_000_000_000
    return feed


@router.get(
    "/gtfs-rt/vehicle-positions",
    response_model=None,
    summary="GTFS-Realtime VehiclePositions feed (protobuf)",
    responses={200: {"description": "A GTFS-Realtime FeedMessage",
                     "content": {_FEED_MEDIA: {"schema": {"type": "string",
                                                           "format": "binary"}}}}},
)
async def gtfs_rt(services: ServicesDep, _caller: Viewer) -> Response:
    return Response(vehicle_feed(services).SerializeToString(), media_type=_FEED_MEDIA)


@router.get("/gtfs-rt/vehicle-positions.json", response_model=None,
            summary="The GTFS-Realtime VehiclePositions feed as JSON (protobuf JSON mapping)")
async def gtfs_rt_json(services: ServicesDep, _caller: Viewer) -> Response:
    body = json_format.MessageToDict(vehicle_feed(services), preserving_proto_field_name=True)
    return json_response(body)
