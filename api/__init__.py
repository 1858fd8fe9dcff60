"""The API: live and historical transport and resource data (REST, WebSocket/SSE, GTFS-RT).

- :func:`create_app`: the FastAPI app for :class:`ApiSettings`; its lifespan owns the broker
  subscription, the InfluxDB client and the background tasks (:class:`Services`);
- :func:`serve` runs it until SIGTERM (``smartcity api run``); :class:`ApiServer` runs it
  on a background thread (tests, benchmarks, the demo);
- :class:`Database`: API keys, alert rules and acknowledgements (SQLAlchemy);
- :class:`Role`, :class:`Principal`: who may do what;
- errors: :class:`ApiError` and its subclasses.

``docs/api.md`` documents the endpoints, authentication, the slow-client policy and the AQI
bands.
"""

from api._alerts import Alert, AlertEngine, Rule
from api._app import create_app
from api._aqi import BANDS, BREAKPOINTS, aqi_band
from api._auth import Principal, Role
from api._db import Database
from api._errors import (
    ApiError,
    BadParameter,
    ConfigError,
    Forbidden,
    NotFound,
    ProblemError,
    RateLimited,
    Unauthorized,
    UpstreamUnavailable,
)
from api._hub import Event, Hub, StreamFilter
from api._influxql import SeriesQuery, quote_ident, quote_string
from api._server import ApiServer, serve
from api._services import Services
from api._settings import ApiSettings, load_settings

__all__ = [
    "BANDS",
    "BREAKPOINTS",
    "Alert",
    "AlertEngine",
    "ApiError",
    "ApiServer",
    "ApiSettings",
    "BadParameter",
    "ConfigError",
    "Database",
    "Event",
    "Forbidden",
    "Hub",
    "NotFound",
    "Principal",
    "ProblemError",
    "RateLimited",
    "Role",
    "Rule",
    "SeriesQuery",
    "Services",
    "StreamFilter",
    "Unauthorized",
    "UpstreamUnavailable",
    "aqi_band",
    "create_app",
    "load_settings",
    "quote_ident",
    "quote_string",
    "serve",
]
