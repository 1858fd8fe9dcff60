"""Transport: vehicles, traffic links with congestion, parking.

Field names follow the Smart Data Models (``Vehicle``, ``TrafficFlowObserved``,
``OffStreetParking``). The congestion level of a link is :func:`api.state.congestion_level`
(speed against free-flow speed). The GTFS-Realtime feed of the same vehicles is served by
:mod:`api.standards`.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from fastapi import APIRouter, Query
from starlette.responses import Response

from api._deps import ServicesDep, Viewer
from api._encoding import doc, json_response
from api._params import AreaQuery, Limit, Offset, Page
from api._services import Services
from api.state import (
    Congestion,
    GeoPoint,
    Latest,
    VehicleOut,
    as_float,
    as_int,
    congestion_level,
)
from api.state import vehicles as live_vehicles

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["transport"])


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


class VehiclePage(Page[VehicleOut]):
    pass


class LinkPage(Page[LinkOut]):
    pass


class ParkingPage(Page[ParkingOut]):
    pass


def _device_point(services: Services, r: Latest) -> GeoPoint | None:
    gw = services.inventory.gateways.get(r.gateway)
    dev = gw.devices.get(r.device) if gw is not None else None
    if dev is not None and dev.location is not None:
        return GeoPoint(dev.location.lat, dev.location.lon)
    return None


RouteQuery = Annotated[str | None, Query(pattern=r"^[A-Za-z0-9._:-]{1,64}$")]


@router.get("/transport/vehicles", response_model=None, responses=doc(VehiclePage),
            summary="Latest position, speed, heading, route and occupancy of every vehicle")
async def vehicles(
    services: ServicesDep, _caller: Viewer, area: AreaQuery = None, route: RouteQuery = None,
    offset: Offset = 0, limit: Limit = 1000,
) -> Response:
    rows = live_vehicles(services.live, area, route)
    return json_response(VehiclePage.of(rows, offset, limit))


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
        speed = as_float(f.get("averageVehicleSpeed"))
        free = services.alerts.free_flow_speed(r.gateway, r.device)
        level, ratio = congestion_level(speed, free)
        if congestion is not None and level != congestion:
            continue
        lane = r.tags.get("lane")
        rows.append(
            LinkOut(
                id=f"{r.gateway}:{r.device}" + (f":{lane}" if lane else ""), gateway=r.gateway,
                device=r.device, lane=lane, intensity=as_float(f.get("intensity")),
                averageVehicleSpeed=speed, occupancy=as_float(f.get("occupancy")),
                freeFlowSpeed=free, speedRatio=ratio, congestionLevel=level,
                congested=level in ("heavy", "severe"), location=_device_point(services, r),
                area=r.area, time=r.time,
            )
        )
    return json_response(LinkPage.of(rows, offset, limit))


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
        free, total = as_int(f.get("availableSpotNumber")), as_int(f.get("totalSpotNumber"))
        occupancy = as_float(f.get("occupancy"))
        if occupancy is None and free is not None and total:
            occupancy = max(0.0, min(1.0, 1 - free / total))
        rows.append(
            ParkingOut(
                id=f"{r.gateway}:{r.device}", gateway=r.gateway, device=r.device,
                availableSpotNumber=free, totalSpotNumber=total, occupancy=occupancy,
                location=_device_point(services, r), area=r.area, time=r.time,
            )
        )
    return json_response(ParkingPage.of(rows, offset, limit))
