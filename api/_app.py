"""The FastAPI application: lifespan, error format, CORS, metrics, routers.

``create_app(settings)`` builds an app whose lifespan owns a :class:`Services` (broker
subscription, InfluxDB client, state, alert engine, background tasks). Every error leaves as
RFC 9457 ``application/problem+json`` naming the offending parameter (:mod:`api._errors`).

Routers, in the order the OpenAPI document lists them: the platform's own (:mod:`api.routes`)
with the standards (:mod:`api.standards`) beside them.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import routes, standards
from api._audit import AuditMiddleware
from api._auth import Role
from api._deps import document_security
from api._encoding import components
from api._errors import add_problem_handlers
from api._fastlane import FastLane
from api._metrics import ApiMetrics
from api._services import Services
from api._settings import ApiSettings
from api.dashboard import mount_dashboard
from api.storage import Database
from foundation import LoopLagMonitor

__all__ = ["create_app"]


class _MetricsMiddleware:
    """Counts and times every HTTP request by route template (never by raw path)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics
        # Labelled children by label values (``labels()`` costs a lock and a tuple per call);
        # as bounded as the labels: route templates times statuses.
        self._counts: dict[tuple[str, str], Any] = {}
        self._times: dict[str, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            name = getattr(route, "path", "unmatched")
            labels = (name, str(status[0]))
            count = self._counts.get(labels)
            if count is None:
                count = self._counts[labels] = self.metrics.requests.labels(*labels)
            timer = self._times.get(name)
            if timer is None:
                timer = self._times[name] = self.metrics.latency.labels(name)
            count.inc()
            timer.observe(time.perf_counter() - start)


def create_app(
    settings: ApiSettings, *, db: Database | None = None, freeze_gc: bool = False
) -> FastAPI:
    """The API as an ASGI app; serve it with uvicorn (see :func:`api.serve`).

    ``freeze_gc`` (what :func:`api.serve` sets: the API owns its process): once started,
    everything alive is moved out of the cyclic collector's reach (:func:`gc.freeze`). A
    full collection then walks only what was made since, not the ~140,000 objects of the
    imported framework: measured 80-110 ms per full collection before, on the event loop,
    one source of the live push's tail (see docs/api.md, "Live push latency").
    """
    services = Services(settings, db=db)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        lag = LoopLagMonitor(services.metrics.loop_lag.observe)
        async with services:
            app.state.services = services
            if settings.demo:
                await _demo_keys(services)
            if freeze_gc:
                gc.collect()
                gc.freeze()
            unwatch = _watch_gc(services.metrics.gc_pause.observe)
            lag.start()
            try:
                yield
            finally:
                unwatch()
                await lag.aclose()

    # Swagger UI and ReDoc load their scripts from a CDN (no subresource integrity in
    # FastAPI's pages): served only when asked for, by default in demo mode alone.
    docs = settings.demo if settings.openapi_docs is None else settings.openapi_docs
    app = FastAPI(
        title="Smart-city telemetry API",
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        version="1.0.0",
        summary="Live and historical transport and resource data, live push, GTFS-Realtime.",
        description="See docs/api.md. Authenticate with `X-API-Key: sck_...` or a bearer token.",
        lifespan=lifespan,
    )
    app.state.services = services
    add_problem_handlers(app, dialects=standards.problem_dialects)
    for router in (routes.inventory, routes.commands, routes.enrolment, routes.history,
                   routes.transport, standards.gtfs_rt, routes.resources, routes.stream,
                   routes.alerts,
                   routes.admin, routes.audit, routes.meta, standards.sta, *standards.ngsild):
        app.include_router(router)
    mount_dashboard(app, settings)  # the operator dashboard (api/dashboard/)
    # Outside the problem handlers: it sees every answer of an audited route, errors included.
    app.add_middleware(AuditMiddleware)
    if settings.fast_lane:
        # Inside metrics and CORS: the hottest reads skip FastAPI's routing (api._fastlane).
        app.add_middleware(FastLane, services=services, routes=app.routes)
    app.add_middleware(_MetricsMiddleware, metrics=services.metrics)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["X-API-Key", "Authorization", "Content-Type"],
            max_age=600,
        )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary,
                                 description=app.description, routes=app.routes)
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, value in components().items():
                schemas.setdefault(name, value)
            document_security(schema, app.routes)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _watch_gc(observe: Callable[[float], None]) -> Callable[[], None]:
    """Time every full (generation 2) collection of the process; returns the undo."""
    started = [0.0]

    def callback(phase: str, info: dict[str, int]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            started[0] = time.perf_counter()
        elif started[0]:
            observe(time.perf_counter() - started[0])

    gc.callbacks.append(callback)
    return lambda: gc.callbacks.remove(callback)


async def _demo_keys(services: Services) -> None:
    """Demo mode: one fresh key per role, printed for the person running the demo."""
    keys: dict[str, str] = {}
    for role in Role:
        _row, key = await asyncio.to_thread(
            services.db.create_key, name=f"demo-{role.name}", role=role.name
        )
        keys[role.name] = key
    services.demo_keys = keys
    lines = "\n".join(f"  {role:9} {key}" for role, key in keys.items())
    sys.stderr.write(f"DEMO MODE: authentication is by these keys (not for production)\n"
                     f"{lines}\n")
    sys.stderr.flush()
