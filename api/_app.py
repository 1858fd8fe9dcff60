"""The FastAPI application: lifespan, error format, CORS, metrics, routers.

``create_app(settings)`` builds an app whose lifespan owns a :class:`Services` (broker
subscription, InfluxDB client, state, alert engine, background tasks). Every error leaves as
RFC 9457 ``application/problem+json`` naming the offending parameter.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import (
    _routes_admin,
    _routes_alerts,
    _routes_history,
    _routes_inventory,
    _routes_ngsild,
    _routes_resources,
    _routes_stream,
    _routes_transport,
)
from api._auth import Role
from api._db import Database
from api._encoding import components
from api._errors import ProblemError
from api._metrics import ApiMetrics
from api._services import Services
from api._settings import ApiSettings
from api.dashboard import mount_dashboard

__all__ = ["create_app"]

log = logging.getLogger("api")

_PROBLEM = "application/problem+json"
_TITLES = {400: "Invalid parameter", 401: "Authentication required", 403: "Role not allowed",
           404: "Not found", 405: "Method not allowed", 406: "Not acceptable",
           413: "Payload too large", 415: "Unsupported media type", 429: "Too many requests"}


def _problem(status: int, title: str, detail: str, instance: str, slug: str,
             parameter: str | None = None, errors: list[dict[str, Any]] | None = None,
             headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"type": f"urn:smartcity:problem:{slug}", "title": title,
                            "status": status, "detail": detail, "instance": instance}
    if parameter is not None:
        body["parameter"] = parameter
    if errors:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, media_type=_PROBLEM, headers=headers)


async def _on_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProblemError)
    return JSONResponse(exc.to_problem(request.url.path), status_code=exc.status_code,
                        media_type=_PROBLEM, headers=exc.headers or None)


async def _on_validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        where = loc[0] if loc else "request"
        name = ".".join(loc[1:]) or where
        errors.append({"parameter": name, "in": where, "detail": str(err.get("msg", ""))})
    first = errors[0] if errors else {"parameter": "request", "detail": "invalid request"}
    return _problem(400, "Invalid parameter", f"{first['parameter']}: {first['detail']}",
                    request.url.path, "invalid-parameter", first["parameter"], errors)


async def _on_http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    title = _TITLES.get(exc.status_code, "HTTP error")
    return _problem(exc.status_code, title, str(exc.detail), request.url.path,
                    title.lower().replace(" ", "-"),
                    headers=dict(exc.headers) if exc.headers else None)


async def _on_error(request: Request, exc: Exception) -> Response:
    log.error("unhandled error", exc_info=exc, extra={"path": request.url.path})
    return _problem(500, "Internal error", "the server failed; the error is logged",
                    request.url.path, "internal")


class _MetricsMiddleware:
    """Counts and times every HTTP request by route template (never by raw path)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

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
            self.metrics.requests.labels(name, str(status[0])).inc()
            self.metrics.latency.labels(name).observe(time.perf_counter() - start)


def create_app(settings: ApiSettings, *, db: Database | None = None) -> FastAPI:
    """The API as an ASGI app; serve it with uvicorn (see :func:`api.serve`)."""
    services = Services(settings, db=db)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with services:
            app.state.services = services
            if settings.demo:
                await _demo_keys(services)
            yield

    app = FastAPI(
        title="Smart-city telemetry API",
        version="1.0.0",
        summary="Live and historical transport and resource data, live push, GTFS-Realtime.",
        description="See docs/api.md. Authenticate with `X-API-Key: sck_...` or a bearer token.",
        lifespan=lifespan,
    )
    app.state.services = services
    app.add_exception_handler(ProblemError, _on_problem)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(Exception, _on_error)
    for module in (_routes_inventory, _routes_history, _routes_transport, _routes_resources,
                   _routes_stream, _routes_alerts, _routes_admin, _routes_ngsild):
        app.include_router(module.router)
    mount_dashboard(app, settings)  # the operator dashboard (api/dashboard/)
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
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


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
