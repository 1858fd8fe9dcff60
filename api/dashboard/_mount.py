"""Serving the dashboard's static files with security headers.

::

    GET /               307 ─▶ /dashboard/
    GET /dashboard/     index.html  ┐  StaticFiles (this package's folder)
    GET /dashboard/x.js app module  ┘  + CSP, nosniff, no-referrer, no-cache
"""

from __future__ import annotations

import logging
import os
from importlib import resources
from pathlib import Path
from typing import Final

from fastapi import FastAPI
from starlette.datastructures import MutableHeaders
from starlette.responses import RedirectResponse
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ASSETS", "CSP", "DASHBOARD_PATH", "mount_dashboard"]

DASHBOARD_PATH: Final = "/dashboard"
#: Everything from this origin only: no inline script, no third-party hosts, no framing.
#: Styles set through the CSSOM (the chart library does that) need no 'unsafe-inline'.
CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
_HEADERS: Final = (
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    # Small files, revalidated each load (ETag/Last-Modified answer 304).
    (b"cache-control", b"no-cache"),
)


#: The folder the dashboard is served from (this package's own folder).
ASSETS: Final = Path(str(resources.files("api.dashboard")))
log = logging.getLogger("api.dashboard")


class _SecurityHeaders:
    """Adds the headers above to every response of the wrapped app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in _HEADERS:
                    headers[name.decode()] = value.decode()
            await send(message)

        await self.app(scope, receive, send_wrapper)


class _Assets(StaticFiles):
    """Only the page's own files: no Python sources, no directory listing."""

    _SUFFIXES: Final = frozenset({".html", ".js", ".css"})

    def lookup_path(self, path: str) -> tuple[str, os.stat_result | None]:
        if path.strip("/.") and Path(path).suffix not in self._SUFFIXES:
            return "", None
        return super().lookup_path(path)


def mount_dashboard(app: FastAPI) -> None:
    """Serve the dashboard at ``/dashboard/`` and redirect ``/`` to it.

    An install without the package's data files serves the API alone and says so.
    """
    if not (ASSETS / "index.html").is_file():
        log.warning("dashboard not served: its files are missing", extra={"path": str(ASSETS)})
        return

    async def root() -> RedirectResponse:
        return RedirectResponse(f"{DASHBOARD_PATH}/", status_code=307)

    app.add_api_route("/", root, include_in_schema=False, methods=["GET"])
    app.mount(
        DASHBOARD_PATH,
        _SecurityHeaders(_Assets(directory=ASSETS, html=True)),
        name="dashboard",
    )
