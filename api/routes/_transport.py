"""Transport: vehicles, traffic links with congestion, parking.

Field names follow the Smart Data Models (``Vehicle``, ``TrafficFlowObserved``,
``OffStreetParking``). The congestion level of a link is :func:`api.state.congestion_level`
(speed against free-flow speed). The GTFS-Realtime feeds of the same vehicles are served by
:mod:`api.standards`; the GTFS static feed (``gtfs_static_path``) and the schedule adherence
computed against it (:mod:`api.state._schedule`) are served here.
"""

from __future__ import annotations

import time
from typing import Annotated, Final

import msgspec
from fastapi import APIRouter, Query
from starlette.responses import Response

from api._deps import ServicesDep, Viewer
from api._encoding import doc, json_response
from api._errors import NotFound
from api._params import (
    WINDOW_RE,
    AreaQuery,
    EndQuery,
    Limit,
    Offset,
    Page,
    StartQuery,
    time_range,
    window_ns,
)
from api._services import Services
from api.state import (
    Adherence,
    Congestion,
    GeoPoint,
    Latest,
    VehicleOut,
    as_float,
    as_int,
    congestion_level,
)
from api.state import vehicles as live_vehicles
from api.storage import ReplayFrames, read_replay

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


class AdherenceSummary(msgspec.Struct):
    vehicles: int
    #: Vehicles whose delay could be computed (on a known trip, on its path).
    matched: int
    late: int
    bunched: int


class AdherencePage(Page[Adherence]):
    """A page of vehicles against their timetable; ``summary`` counts the whole (filtered)
    list, the thresholds are the settings the flags were computed with."""

    summary: AdherenceSummary | None = None
    lateThreshold_s: float = 0.0
    bunchedRatio: float = 0.0
    #: SHA-256 of the GTFS zip the timetable was read from.
    feedSha256: str = ""


def _no_feed() -> NotFound:
    return NotFound("no GTFS timetable is configured (setting gtfs_static_path)")


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


@router.get("/transport/adherence", response_model=None, responses=doc(AdherencePage),
            summary="Schedule adherence: delay, headway, late and bunched flags per vehicle")
async def adherence(
    services: ServicesDep,
    _caller: Viewer,
    route: RouteQuery = None,
    late: Annotated[bool | None, Query(description="Only late (true) or not late (false)")]
    = None,
    bunched: Annotated[bool | None, Query(description="Only bunched (true) or not (false)")]
    = None,
    offset: Offset = 0,
    limit: Limit = 1000,
) -> Response:
    schedule = services.schedule
    if schedule.feed is None:
        raise _no_feed()
    rows = [a.row for a in await schedule.current(services.live)]
    if route is not None:
        rows = [r for r in rows if r.routeId == route]
    if late is not None:
        rows = [r for r in rows if r.late is late]
    if bunched is not None:
        rows = [r for r in rows if r.bunched is bunched]
    page = AdherencePage.of(rows, offset, limit)
    page.summary = AdherenceSummary(
        vehicles=len(rows), matched=sum(r.delay_s is not None for r in rows),
        late=sum(r.late for r in rows), bunched=sum(r.bunched for r in rows),
    )
    page.lateThreshold_s = schedule.late_threshold_s
    page.bunchedRatio = schedule.bunched_ratio
    page.feedSha256 = schedule.feed.sha256
    return json_response(page)


#: Steps of a replay: default so that a range has about this many, and at most this many.
_REPLAY_STEPS: Final = 360
_REPLAY_MAX_STEPS: Final = 2000


@router.get("/transport/replay", response_model=None, responses=doc(ReplayFrames),
            summary="Vehicles' positions and links' congestion step by step over a past range")
async def replay(
    services: ServicesDep,
    _caller: Viewer,
    start: StartQuery = None,
    end: EndQuery = None,
    step: Annotated[
        str | None,
        Query(pattern=f"^{WINDOW_RE.pattern}$",
              description="Step (e.g. 60s, 5m); default: the range / 360, at least 60 s"),
    ] = None,
) -> Response:
    """The map as it was: per step, each vehicle's last position and each traffic link's mean
    speed with its congestion level. Default range: the last 6 hours. Columnar: the lists of
    every series follow ``times``."""
    settings = services.settings
    if start is None and end is None:
        end_ns = time.time_ns()
        start_ns = end_ns - 6 * 3600 * 10**9
    else:
        start_ns, end_ns = time_range(start, end, max_days=settings.max_range_days)
    if step is None:
        step_s = max(60, -(-(end_ns - start_ns) // (_REPLAY_STEPS * 10**9)))
    else:
        step_s = max(1, window_ns(step) // 10**9)
    frames = await read_replay(
        services.influx, start_ns=start_ns, end_ns=end_ns, step_s=step_s,
        max_steps=_REPLAY_MAX_STEPS, max_series=settings.warm_max_series,
    )
    for link in frames.links:
        free = services.alerts.free_flow_speed(link.gateway, link.device)
        link.freeFlowSpeed = free
        link.congestionLevel = [congestion_level(v, free)[0] for v in link.speed]
    return json_response(frames)


@router.get(
    "/transport/gtfs/static.zip",
    response_model=None,
    summary="The GTFS Schedule feed (zip) the timetable is read from",
    responses={200: {"description": "A GTFS zip",
                     "content": {"application/zip": {"schema": {"type": "string",
                                                                "format": "binary"}}}}},
)
async def gtfs_static(services: ServicesDep, _caller: Viewer) -> Response:
    feed = services.schedule.feed
    if feed is None:
        raise _no_feed()
    return Response(
        feed.raw, media_type="application/zip",
        headers={"Content-Disposition": 'attachment; filename="gtfs.zip"',
                 "ETag": f'"{feed.sha256}"', "Cache-Control": "private, max-age=300"},
    )
