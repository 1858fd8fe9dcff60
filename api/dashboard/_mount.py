"""Serving the dashboard's static files with security headers.

::

    GET /               307 ─▶ /dashboard/
    GET /dashboard/     index.html  ┐  StaticFiles (this package's folder)
    GET /dashboard/x.js app module  ┘  + CSP, nosniff, no-referrer, no-cache
    GET /v1/dashboard/config        base map, staleness, time zone, timetable (viewer key)
"""

from __future__ import annotations

import logging
import os
from importlib import resources
from pathlib import Path
from typing import Final

import msgspec
from fastapi import FastAPI
from starlette.datastructures import MutableHeaders
from starlette.responses import RedirectResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api._deps import Viewer
from api._encoding import doc, json_response
from api._settings import ApiSettings

__all__ = [
    "ASSETS",
    "CSP",
    "DASHBOARD_PATH",
    "DashboardConfig",
    "content_security_policy",
    "dashboard_config",
    "mount_dashboard",
]

DASHBOARD_PATH: Final = "/dashboard"


def content_security_policy(tile_origin: str | None = None) -> str:
    """Everything from this origin only: no inline script, no third-party hosts, no framing.

    The one exception is images from the configured base-map tile server (``tile_origin``,
    e.g. ``https://tile.openstreetmap.org``), when there is one. Styles set through the CSSOM
    (the chart and map libraries do that) need no 'unsafe-inline'.
    """
    images = f"'self' data: {tile_origin}" if tile_origin else "'self' data:"
    return (
        f"default-src 'none'; script-src 'self'; style-src 'self'; img-src {images}; "
        "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    )


#: The policy without a base map.
CSP: Final = content_security_policy()


def _headers(csp: str) -> tuple[tuple[str, str], ...]:
    return (
        ("content-security-policy", csp),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("x-frame-options", "DENY"),
        # Small files, revalidated each load (ETag/Last-Modified answer 304).
        ("cache-control", "no-cache"),
    )


#: The folder the dashboard is served from (this package's own folder).
ASSETS: Final = Path(str(resources.files("api.dashboard")))
log = logging.getLogger("api.dashboard")


class _SecurityHeaders:
    """Adds the headers above to every response of the wrapped app."""

    def __init__(self, app: ASGIApp, csp: str) -> None:
        self.app = app
        self.headers = _headers(csp)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in self.headers:
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_wrapper)


class _Assets(StaticFiles):
    """Only the page's own files: no Python sources, no directory listing."""

    _SUFFIXES: Final = frozenset({".html", ".js", ".css"})

    def lookup_path(self, path: str) -> tuple[str, os.stat_result | None]:
        if path.strip("/.") and Path(path).suffix not in self._SUFFIXES:
            return "", None
        return super().lookup_path(path)


class TilesOut(msgspec.Struct):
    """An XYZ tile source for the base map (Leaflet's ``L.tileLayer`` options)."""

    url: str
    attribution: str
    subdomains: str
    max_zoom: int


class DashboardConfig(msgspec.Struct):
    #: The base map under the drawing; ``null``: none, the map is drawn from geometry alone.
    tiles: TilesOut | None
    #: A device with no reading for this long is drawn stale (the API's ``stale_after_s``).
    stale_after_s: float = 300.0
    #: The city's IANA time zone for times on the page; ``null``: the browser's.
    timezone: str | None = None
    #: Whether a GTFS timetable is configured (``/v1/transport/adherence`` answers).
    timetable: bool = False


def dashboard_config(settings: ApiSettings) -> DashboardConfig:
    tiles = None
    if settings.map_tiles_url is not None:
        tiles = TilesOut(settings.map_tiles_url, settings.map_tiles_attribution,
                         settings.map_tiles_subdomains, settings.map_tiles_max_zoom)
    return DashboardConfig(tiles, settings.stale_after_s, settings.city_timezone,
                           settings.gtfs_static_path is not None)


def mount_dashboard(app: FastAPI, settings: ApiSettings) -> None:
    """Serve the dashboard at ``/dashboard/``, redirect ``/`` to it, and serve its settings
    at ``GET /v1/dashboard/config`` (viewer key: a tile URL may carry a provider's token).

    An install without the package's data files serves the API alone and says so.
    """
    config = json_response(dashboard_config(settings)).body

    @app.get("/v1/dashboard/config", response_model=None, responses=doc(DashboardConfig),
             tags=["meta"], summary="What the operator dashboard needs: the base-map source")
    async def get_config(_caller: Viewer) -> Response:
        return Response(config, media_type="application/json")

    if not (ASSETS / "index.html").is_file():
        log.warning("dashboard not served: its files are missing", extra={"path": str(ASSETS)})
        return

    async def root() -> RedirectResponse:
        return RedirectResponse(f"{DASHBOARD_PATH}/", status_code=307)

    app.add_api_route("/", root, include_in_schema=False, methods=["GET"])
    csp = content_security_policy(settings.map_tiles_origin)
    app.mount(
        DASHBOARD_PATH,
        _SecurityHeaders(_Assets(directory=ASSETS, html=True), csp),
        name="dashboard",
    )
