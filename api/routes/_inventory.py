"""Inventory (gateways, devices), live state, and pushing a gateway's config."""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any, Literal

import msgspec
from fastapi import APIRouter, Body, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import SQLAlchemyError
from starlette.responses import Response

from api._audit import audited
from api._deps import Engineer, ServicesDep, Viewer
from api._encoding import doc, json_response
from api._errors import NotFound
from api._fleet import (
    FleetClock,
    FleetContext,
    UpdateOut,
    clock_of,
    disk_free_of,
    flags_of,
    fleet_context,
    health_version,
    links_of,
    update_of,
)
from api._params import (
    NAME_PATTERN,
    AreaQuery,
    DevicePath,
    DeviceQuery,
    GatewayPath,
    GatewayQuery,
    Limit,
    Offset,
    Page,
    iso,
)
from api._services import Services
from api.state import Completeness, DeviceState, GatewayState, Latest
from telemetry import ConfigDesired, SpoolHealth, encode_message

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["inventory"])
log = logging.getLogger("api.audit")


class LocationOut(msgspec.Struct, omit_defaults=True):
    lat: float
    lon: float
    alt: float | None = None
    area: str | None = None


class SpoolOut(SpoolHealth, frozen=True, kw_only=True):
    """The gateway's spool as of its last health report (``reported_at``)."""

    reported_at: str


class GatewaySummary(msgspec.Struct):
    id: str
    state: str
    online: bool
    since: str
    last_seen: str | None
    agent: str | None
    config_version: int | None
    location: LocationOut | None
    reason: str | None
    devices: int
    completeness: Completeness | None
    #: Spool backlog from the last health report; ``null`` before the first one.
    spool: SpoolOut | None
    # The fleet view (api._fleet), from the last health report unless said otherwise.
    version: str | None = None
    last_update: UpdateOut | None = None
    #: The last clock check (this API's or the one the gateway reports, the newer).
    clock: FleetClock | None = None
    #: Enrolment state (pending, enrolled, revoked, expired); null: not enrolled here.
    enrolment: str | None = None
    disk_free_bytes: int | None = None
    links: dict[str, str] = {}
    #: Of ``outdated``, ``clock_off``, ``disk_low`` (``?status=`` filters on them).
    flags: list[str] = []


class DeviceOut(msgspec.Struct):
    id: str
    gateway: str
    kind: str
    online: bool
    announced: bool
    last_reading: str | None
    area: str | None
    location: LocationOut | None
    measurements: dict[str, dict[str, str]]
    meta: dict[str, str]


class GatewayDetail(GatewaySummary):
    health: dict[str, Any] | None = None
    config_reported: dict[str, Any] | None = None
    device_list: list[DeviceOut] = []


class GatewayPage(Page[GatewaySummary]):
    pass


class DevicePage(Page[DeviceOut]):
    pass


class LatestPage(Page[Latest]):
    pass


class DeviceLatest(msgspec.Struct):
    gateway: str
    device: str
    readings: list[Latest]


class ConfigPushed(msgspec.Struct):
    gateway: str
    topic: str
    version: int


def _loc(location: Any) -> LocationOut | None:
    if location is None:
        return None
    return LocationOut(location.lat, location.lon, location.alt, location.area)


def gateway_online(services: Services, gw: GatewayState, now_ns: int) -> bool:
    stale = services.settings.stale_after_s * 1e9
    return gw.state == "online" or (gw.state == "unknown" and now_ns - gw.last_seen_ns < stale)


def _spool(health: dict[str, Any] | None) -> SpoolOut | None:
    spool = health.get("spool") if health else None
    if not isinstance(spool, dict):
        return None
    return SpoolOut(**spool, reported_at=iso(health["ts"]) if health else "")


def _summary(
    services: Services, gw: GatewayState, now_ns: int, fleet: FleetContext | None = None
) -> GatewaySummary:
    version, clock = health_version(gw), clock_of(services, gw)
    disk_free = disk_free_of(gw.health)
    return GatewaySummary(
        id=gw.id,
        state=gw.state,
        online=gateway_online(services, gw, now_ns),
        since=iso(gw.since_ns),
        last_seen=iso(gw.last_seen_ns) if gw.last_seen_ns else None,
        agent=gw.agent,
        config_version=gw.config_version,
        location=_loc(gw.location),
        reason=gw.reason,
        devices=len(gw.devices),
        completeness=gw.completeness,
        spool=_spool(gw.health),
        version=version,
        last_update=update_of(gw.health),
        clock=clock,
        enrolment=None if fleet is None else fleet.enrolments.get(gw.id),
        disk_free_bytes=disk_free,
        links=links_of(gw.health),
        flags=[] if fleet is None else flags_of(services, fleet, version, clock, disk_free),
    )


def device_out(services: Services, gw: GatewayState, dev: DeviceState, now_ns: int) -> DeviceOut:
    online = gateway_online(services, gw, now_ns)
    if online and dev.last_reading_ns is not None:
        online = now_ns - dev.last_reading_ns < services.settings.stale_after_s * 1e9
    return DeviceOut(
        id=dev.id,
        gateway=gw.id,
        kind=dev.kind,
        online=online,
        announced=dev.announced,
        last_reading=iso(dev.last_reading_ns) if dev.last_reading_ns else None,
        area=dev.area(gw),
        location=_loc(dev.location),
        measurements=dev.measurements,
        meta=dev.meta,
    )


@router.get("/gateways", response_model=None, responses=doc(GatewayPage),
            summary="Gateways with presence, last seen, completeness and the fleet view")
async def list_gateways(
    services: ServicesDep,
    _caller: Viewer,
    state: Annotated[Literal["online", "offline", "unknown"] | None, Query()] = None,
    area: AreaQuery = None,
    status: Annotated[
        list[Literal["outdated", "clock_off", "disk_low"]] | None,
        Query(description="Only gateways with any of these flags"),
    ] = None,
    offset: Offset = 0,
    limit: Limit = 100,
) -> Response:
    now = time.time_ns()
    fleet = await fleet_context(services)
    rows = [
        row
        for _, gw in sorted(services.inventory.gateways.items())
        if (state is None or gw.state == state)
        and (area is None or (gw.location is not None and gw.location.area == area))
        and (row := _summary(services, gw, now, fleet))
        and (not status or any(f in row.flags for f in status))
    ]
    return json_response(GatewayPage.of(rows, offset, limit))


@router.get("/gateways/{gateway}", response_model=None, responses=doc(GatewayDetail),
            summary="One gateway with its devices, health and reported config")
async def get_gateway(services: ServicesDep, _caller: Viewer, gateway: GatewayPath) -> Response:
    gw = services.inventory.gateways.get(gateway)
    if gw is None:
        raise NotFound(f"no gateway {gateway!r}", parameter="gateway", location="path")
    now = time.time_ns()
    base = _summary(services, gw, now, await fleet_context(services))
    detail = GatewayDetail(
        **{f: getattr(base, f) for f in base.__struct_fields__},
        health=gw.health,
        config_reported=gw.config_reported,
        device_list=[device_out(services, gw, d, now) for _, d in sorted(gw.devices.items())],
    )
    return json_response(detail)


@router.get("/devices", response_model=None, responses=doc(DevicePage),
            summary="Devices, filterable by gateway, kind, measurement, area, online")
async def list_devices(
    services: ServicesDep,
    _caller: Viewer,
    gateway: GatewayQuery = None,
    kind: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9._-]{1,64}$")] = None,
    measurement: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
    area: AreaQuery = None,
    online: bool | None = None,
    offset: Offset = 0,
    limit: Limit = 100,
) -> Response:
    now = time.time_ns()
    rows = []
    for gw, dev in sorted(services.inventory.iter_devices(), key=lambda p: (p[0].id, p[1].id)):
        if gateway is not None and gw.id != gateway:
            continue
        if kind is not None and dev.kind != kind:
            continue
        if measurement is not None and measurement not in dev.measurements and not any(
            k.split(",")[0] == measurement
            for k in services.live.by_device.get((gw.id, dev.id), {})
        ):
            continue
        out = device_out(services, gw, dev, now)
        if area is not None and out.area != area:
            continue
        if online is not None and out.online != online:
            continue
        rows.append(out)
    return json_response(DevicePage.of(rows, offset, limit))


@router.get("/devices/{gateway}/{device}", response_model=None, responses=doc(DeviceOut),
            summary="One device")
async def get_device(
    services: ServicesDep, _caller: Viewer, gateway: GatewayPath, device: DevicePath
) -> Response:
    gw = services.inventory.gateways.get(gateway)
    dev = gw.devices.get(device) if gw is not None else None
    if gw is None or dev is None:
        raise NotFound(f"no device {device!r} on gateway {gateway!r}", parameter="device",
                       location="path")
    return json_response(device_out(services, gw, dev, time.time_ns()))


@router.get("/live", response_model=None, responses=doc(LatestPage), tags=["live"],
            summary="Latest reading per series, filterable")
async def list_live(
    services: ServicesDep,
    _caller: Viewer,
    measurement: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
    gateway: GatewayQuery = None,
    device: DeviceQuery = None,
    area: AreaQuery = None,
    offset: Offset = 0,
    limit: Limit = 100,
) -> Response:
    return json_response(live_page(services, measurement, gateway, device, area, offset, limit))


def live_page(
    services: Services, measurement: str | None, gateway: str | None, device: str | None,
    area: str | None, offset: int, limit: int,
) -> LatestPage:
    """``GET /v1/live``'s page (also answered by the fast lane, :mod:`api._fastlane`)."""
    live = services.live
    if measurement is not None:
        rows = live.measurement(measurement)
    else:
        rows = [r for key in sorted(live.by_device) for r in live.device(*key)]
    rows = [
        r for r in rows
        if (gateway is None or r.gateway == gateway)
        and (device is None or r.device == device)
        and (area is None or r.area == area)
    ]
    return LatestPage.of(rows, offset, limit)


@router.get("/live/{gateway}/{device}", response_model=None, responses=doc(DeviceLatest),
            tags=["live"], summary="Latest readings of one device (every measurement)")
async def get_live(
    services: ServicesDep, _caller: Viewer, gateway: GatewayPath, device: DevicePath
) -> Response:
    return json_response(device_latest(services, gateway, device))


def device_latest(services: Services, gateway: str, device: str) -> DeviceLatest:
    """``GET /v1/live/{gateway}/{device}``'s body (also answered by the fast lane)."""
    readings = services.live.device(gateway, device)
    if not readings:
        raise NotFound(f"no readings of device {device!r} on gateway {gateway!r}",
                       parameter="device", location="path")
    return DeviceLatest(gateway, device, readings)


class ConfigBody(BaseModel):
    """A desired gateway configuration (the edge agent's YAML config as JSON)."""

    model_config = ConfigDict(extra="forbid")
    version: Annotated[int, Field(ge=1, le=2**31 - 1)]
    config: dict[str, Any]


@router.put("/gateways/{gateway}/config", response_model=None, status_code=202,
            responses=doc(ConfigPushed, "Published, retained, on the gateway's config topic",
                          status=202),
            summary="Push a desired config to a gateway (engineer)",
            openapi_extra=audited("config.push"))
async def push_config(
    services: ServicesDep,
    caller: Engineer,
    gateway: GatewayPath,
    body: Annotated[ConfigBody, Body()],
) -> Response:
    topic = services.broker.topics.config_desired(gateway)
    payload = encode_message(ConfigDesired(version=body.version, config=body.config))
    await services.broker.publish(topic, payload, qos=1, retain=True)
    # Its one audit entry, pending until the gateway reports what it did with that version
    # (applied: acked; rejected: failed with its reason). A refused request never gets here:
    # the audit middleware records it (api._audit).
    try:
        entry = await services.audit.record(
            actor=caller, action="config.push", gateway=gateway,
            detail={"version": body.version}, result="pending",
        )
    except SQLAlchemyError as exc:  # the push stands; a lost entry is an error to see
        services.metrics.audit_failed.inc()
        log.error("audit entry not written", extra={"action": "config.push", "error": repr(exc)})
    else:
        services.config_pushes.pushed(gateway, body.version, entry)
    return json_response(ConfigPushed(gateway, topic, body.version), status=202)
