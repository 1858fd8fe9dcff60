"""Resources: water, energy, air quality (with EAQI band), noise; latest by area, history."""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec
from fastapi import APIRouter, Query
from starlette.responses import Response

from api._deps import ServicesDep, Viewer
from api._encoding import doc, json_response
from api._errors import BadParameter
from api._params import (
    NAME_PATTERN,
    AggregateQuery,
    AreaQuery,
    DeviceQuery,
    EndQuery,
    GatewayQuery,
    Limit,
    Offset,
    Page,
    StartQuery,
    WindowQuery,
    time_range,
)
from api.standards import BANDS, AqiBand, aqi_band
from api.state import Latest
from api.storage import HistoryOut, read_series

__all__ = ["RESOURCES", "router"]

router = APIRouter(prefix="/v1/resources", tags=["resources"])

ResourceKind = Literal["water", "energy", "air", "noise"]
RESOURCES: Final[dict[str, str]] = {
    "water": "WaterConsumptionObserved",
    "energy": "ThreePhaseAcMeasurement",
    "air": "AirQualityObserved",
    "noise": "NoiseLevelObserved",
}
_MAX_DEVICES: Final = 500


class ResourceReading(msgspec.Struct):
    gateway: str
    device: str
    measurement: str
    area: str | None
    time: str
    fields: dict[str, float | int | bool | str]
    quality: str
    aqi: AqiBand | None = None
    aqi_pollutants: dict[str, AqiBand] | None = None


class ResourcePage(Page[ResourceReading]):
    pass


class AreaSummary(msgspec.Struct):
    area: str | None
    devices: int
    latest: str
    mean: dict[str, float]
    aqi: str | None = None


class AreaList(msgspec.Struct):
    kind: str
    measurement: str
    areas: list[AreaSummary]


def _reading(kind: str, r: Latest) -> ResourceReading:
    out = ResourceReading(r.gateway, r.device, r.measurement, r.area, r.time, r.fields, r.quality)
    if kind == "air":
        band, per = aqi_band(r.fields)
        out.aqi, out.aqi_pollutants = band, per
    return out


@router.get("/{kind}", response_model=None, responses=doc(ResourcePage),
            summary="Latest readings of a resource kind (air readings carry their EAQI band)")
async def latest(
    services: ServicesDep, _caller: Viewer, kind: ResourceKind, area: AreaQuery = None,
    offset: Offset = 0, limit: Limit = 1000,
) -> Response:
    rows = [
        _reading(kind, r) for r in services.live.measurement(RESOURCES[kind])
        if area is None or r.area == area
    ]
    return json_response(ResourcePage.of(rows, offset, limit))


@router.get("/{kind}/areas", response_model=None, responses=doc(AreaList),
            summary="Per area: device count, mean of each numeric field, worst EAQI band")
async def by_area(services: ServicesDep, _caller: Viewer, kind: ResourceKind) -> Response:
    groups: dict[str | None, list[Latest]] = {}
    for r in services.live.measurement(RESOURCES[kind]):
        groups.setdefault(r.area, []).append(r)
    areas = []
    for area, rows in sorted(groups.items(), key=lambda kv: kv[0] or ""):
        sums: dict[str, list[float]] = {}
        for r in rows:
            for name, value in r.fields.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    sums.setdefault(name, []).append(float(value))
        means = {name: sum(v) / len(v) for name, v in sorted(sums.items())}
        summary = AreaSummary(area, len(rows), max(r.time for r in rows), means)
        if kind == "air":
            bands = [b for b in (aqi_band(r.fields)[0] for r in rows) if b is not None]
            summary.aqi = max(bands, key=BANDS.index) if bands else None
        areas.append(summary)
    return json_response(AreaList(kind, RESOURCES[kind], areas))


@router.get("/{kind}/history", response_model=None, responses=doc(HistoryOut),
            summary="History of one field, for one device or averaged over an area")
async def history(
    services: ServicesDep,
    _caller: Viewer,
    kind: ResourceKind,
    field: Annotated[str, Query(pattern=NAME_PATTERN)],
    area: AreaQuery = None,
    device: DeviceQuery = None,
    gateway: GatewayQuery = None,
    start: StartQuery = None,
    end: EndQuery = None,
    window: WindowQuery = None,
    aggregate: AggregateQuery = None,
) -> Response:
    measurement = RESOURCES[kind]
    settings = services.settings
    start_ns, end_ns = time_range(start, end, max_days=settings.max_range_days)
    if device is not None:
        devices: list[tuple[str | None, str]] = [(gateway, device)]
    else:
        devices = sorted(
            {
                (r.gateway, r.device) for r in services.live.measurement(measurement)
                if (area is None or r.area == area) and (gateway is None or r.gateway == gateway)
            }
        )
        if not devices:
            raise BadParameter(f"no {kind} devices match", parameter="area" if area else "device")
        if len(devices) > _MAX_DEVICES:
            raise BadParameter(
                f"{len(devices)} devices match; narrow to {_MAX_DEVICES} with area or gateway",
                parameter="area",
            )
        if window is None:
            window = "1h"
    out = await read_series(
        services.influx, max_points=settings.max_points, measurement=measurement,
        field=field, devices=devices, start_ns=start_ns, end_ns=end_ns, window=window,
        aggregate=aggregate,
    )
    return json_response(out)
