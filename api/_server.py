"""Serving the app with uvicorn: blocking (:func:`serve`) or on a thread (:class:`ApiServer`)."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import socket
import threading
import time

import uvicorn
from fastapi import FastAPI

from api._app import create_app
from api._errors import ApiError
from api._services import Services
from api._settings import ApiSettings
from api.storage import Database
from foundation import Startable

__all__ = ["ApiServer", "base_url", "serve", "uvicorn_config"]

log = logging.getLogger("api.server")


def base_url(settings: ApiSettings) -> str:
    """``https://host:port`` when the API serves TLS (``tls_cert_file``), else ``http://``."""
    scheme = "https" if settings.https else "http"
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return f"{scheme}://{host}:{settings.port}"


def uvicorn_config(
    settings: ApiSettings, *, db: Database | None = None, freeze_gc: bool = False
) -> uvicorn.Config:
    fast = importlib.util.find_spec("uvloop") is not None
    return uvicorn.Config(
        create_app(settings, db=db, freeze_gc=freeze_gc),
        host=settings.host,
        port=settings.port,
        loop="uvloop" if fast else "asyncio",
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        ws="websockets-sansio",
        ws_per_message_deflate=settings.stream_ws_compression,
        # Our own structured logs; access logs would print stream keys given as ?key=.
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
        ssl_certfile=None if settings.tls_cert_file is None else str(settings.tls_cert_file),
        ssl_keyfile=None if settings.tls_key_file is None else str(settings.tls_key_file),
    )


def _announce(settings: ApiSettings) -> None:
    log.info("serving the API", extra={"url": base_url(settings), "https": settings.https})


def serve(settings: ApiSettings) -> None:
    """Run the API until SIGINT/SIGTERM (what ``smartcity api run`` does)."""
    # The process is the API's own: its start-up objects may be frozen (create_app).
    server = uvicorn.Server(uvicorn_config(settings, freeze_gc=True))
    _announce(settings)
    server.run()
    if not server.started:
        raise ApiError("the API did not start (see the log above)")


class ApiServer(Startable):
    """The API on a background thread, for tests, benchmarks and the demo::

        with ApiServer(settings) as api:       # returns once serving
            httpx.get(f"{api.url}/healthz")
    """

    def __init__(self, settings: ApiSettings, *, db: Database | None = None) -> None:
        self._sock: socket.socket | None = None
        if settings.port == 0:
            # Bound here and handed to uvicorn: a port picked, closed and bound again later
            # could be taken in between by another process (seen on a busy CI machine).
            family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
            self._sock = socket.socket(family, socket.SOCK_STREAM)
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._sock.bind((settings.host, 0))
            settings = settings.model_copy(update={"port": self._sock.getsockname()[1]})
        self.settings = settings
        self.config = uvicorn_config(settings, db=db)
        app = self.config.app
        assert isinstance(app, FastAPI)
        self._services: Services = app.state.services
        self.server = uvicorn.Server(self.config)
        self._thread = threading.Thread(target=self._main, name="api.server", daemon=True)
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        """``https://...`` when the settings hold a certificate, else ``http://...``."""
        return base_url(self.settings)

    @property
    def services(self) -> Services:
        return self._services

    def _main(self) -> None:
        try:
            if self.config.loop == "uvloop":
                import uvloop

                uvloop.run(self.server.serve(sockets=self._sockets()))
            else:
                asyncio.run(self.server.serve(sockets=self._sockets()))
        except BaseException as exc:  # noqa: BLE001 - handed to the starting thread
            self._error = exc

    def _sockets(self) -> list[socket.socket] | None:
        return None if self._sock is None else [self._sock]

    def start(self, timeout: float = 60.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise ApiError(f"API did not start: {self._error!r}")
            time.sleep(0.02)
        _announce(self.settings)

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self._thread.join(timeout)
        if self._sock is not None:
            self._sock.close()
