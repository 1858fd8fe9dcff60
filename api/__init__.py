"""The API: live and historical transport and resource data (REST, WebSocket/SSE, GTFS-RT,
NGSI-LD).

- :func:`create_app`: the FastAPI app for :class:`ApiSettings`; its lifespan owns the broker
  subscription, the InfluxDB client and the background tasks;
- :func:`serve` runs it until SIGTERM (``smartcity api run``); :class:`ApiServer` runs it
  on a background thread (tests, benchmarks, the demo);
- :func:`load_settings`: settings from YAML, the environment and flags, validated once
  (:class:`MqttSettings`: the ``mqtt`` block, the platform's broker-access model);
- :class:`Database`: API keys, alert rules and acknowledgements (SQLAlchemy);
- :class:`Role`, :class:`Principal`: who may do what;
- errors: :class:`ApiError` and its subclasses.

Inside, the package has rooms: ``routes`` (the platform's endpoints, one module per domain),
``standards`` (NGSI-LD, GTFS-Realtime, EAQI), ``state`` (what is held in memory and the
background work that keeps it current), ``storage`` (InfluxDB, every InfluxQL statement, the
operator database) and ``dashboard``. ``docs/api.md`` documents the endpoints,
authentication, the slow-client policy and the AQI bands.
"""

from api._app import create_app
from api._auth import Principal, Role
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
from api._server import ApiServer, serve
from api._settings import ApiSettings, MqttSettings, load_settings
from api._settings_replicas import InfluxReplica, ReplicaLagSettings
from api.storage import Database

__all__ = [
    "ApiError",
    "ApiServer",
    "ApiSettings",
    "BadParameter",
    "ConfigError",
    "Database",
    "Forbidden",
    "InfluxReplica",
    "MqttSettings",
    "NotFound",
    "Principal",
    "ProblemError",
    "RateLimited",
    "ReplicaLagSettings",
    "Role",
    "Unauthorized",
    "UpstreamUnavailable",
    "create_app",
    "load_settings",
    "serve",
]
