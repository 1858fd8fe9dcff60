"""Health, readiness, Prometheus metrics and the vocabulary (measurements, units, EAQI)."""

from __future__ import annotations

import msgspec
from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from api._deps import ServicesDep, Viewer, authenticate_key
from api._encoding import doc, json_response
from api.standards import BANDS, BREAKPOINTS
from api.storage import ReplicaHealth
from telemetry import MEASUREMENTS

__all__ = ["router"]

router = APIRouter()


class Health(msgspec.Struct):
    status: str


class Ready(msgspec.Struct):
    status: str
    broker: bool
    influxdb: bool
    warmed_series: int


@router.get("/healthz", response_model=None, responses={200: {"description": "Alive"}},
            tags=["meta"], summary="Liveness (no key needed)")
async def healthz() -> Response:
    return json_response(Health("ok"))


@router.get("/readyz", response_model=None, tags=["meta"],
            responses={200: {"description": "Ready"}, 503: {"description": "Not ready"}},
            summary="Readiness: broker subscribed and InfluxDB answering (no key needed)")
async def readyz(services: ServicesDep) -> Response:
    influx = await services.influx.ping()
    ok = influx and services.broker.connected
    return json_response(
        Ready("ok" if ok else "degraded", services.broker.connected, influx, services.warmed),
        status=200 if ok else 503,
    )


class InfluxHealth(msgspec.Struct):
    #: The replica queries go to now.
    reading_from: str
    replicas: list[ReplicaHealth]


class HealthOut(msgspec.Struct):
    #: ``ok``: subscribed to the broker and some InfluxDB replica answers and has caught up.
    status: str
    broker: bool
    influxdb: InfluxHealth


@router.get("/v1/health", response_model=None, responses=doc(HealthOut), tags=["meta"],
            summary="Broker link and each InfluxDB replica: up, consumer lag, which one is read")
async def health(services: ServicesDep, _caller: Viewer) -> Response:
    replicas = services.influx.replicas.health()
    reading = next((r.name for r in replicas if r.reading), replicas[0].name)
    ok = services.broker.connected and any(r.healthy and r.caught_up for r in replicas)
    return json_response(HealthOut(
        "ok" if ok else "degraded", services.broker.connected, InfluxHealth(reading, replicas)
    ))


@router.get("/metrics", response_model=None, tags=["meta"],
            responses={200: {"description": "Prometheus text format"}},
            summary="Prometheus metrics (viewer key unless metrics_public)")
async def metrics(request: Request, services: ServicesDep) -> Response:
    if not services.settings.metrics_public:
        key = request.headers.get("x-api-key")
        auth = request.headers.get("authorization", "")
        if key is None and auth.lower().startswith("bearer "):
            key = auth[7:].strip()
        await authenticate_key(services, key, request.client.host if request.client else "")
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)


class FieldOut(msgspec.Struct):
    type: str
    unit: str
    description: str


class MeasurementOut(msgspec.Struct):
    domain: str
    description: str
    fields: dict[str, FieldOut]
    tags: list[str]


class Vocabulary(msgspec.Struct):
    measurements: dict[str, MeasurementOut]
    aqi_bands: list[str]
    aqi_breakpoints: dict[str, list[float]]


@router.get("/v1/vocabulary", response_model=None, responses=doc(Vocabulary), tags=["meta"],
            summary="Known measurements, fields and units; EAQI band breakpoints")
async def vocabulary(_caller: Viewer) -> Response:
    return json_response(
        Vocabulary(
            {
                name: MeasurementOut(
                    spec.domain, spec.description,
                    {f: FieldOut(s.type, s.unit, s.description) for f, s in spec.fields.items()},
                    list(spec.tags),
                )
                for name, spec in MEASUREMENTS.items()
            },
            list(BANDS),
            {k: list(v) for k, v in BREAKPOINTS.items()},
        )
    )
