"""Typed settings of the API, validated once at start-up.

Sources, highest priority first: keyword arguments (command-line flags), environment variables
prefixed ``SMARTCITY_API_`` (``SMARTCITY_API_INFLUX_URL``; nested keys joined by ``__``:
``SMARTCITY_API_MQTT__TLS__CA_FILE``), an optional YAML file given to :func:`load_settings`,
the defaults below. Unknown keys are refused, so a typo fails at start-up with the key and the
reason. The broker is the ``mqtt`` block (:mod:`api._settings_mqtt`, whose flat ``mqtt_*``
aliases are deprecated).

Parsing never opens a file: certificates, keys and the broker password file are read when the
connections are prepared at start-up (``api check-config`` runs the same preparation).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import PydanticBaseSettingsSource, SettingsConfigDict

from api._errors import ConfigError
from api._settings_enrol import EnrolSettings
from api._settings_mqtt import FoldedSource, LegacyEnvSource, MqttSettings
from api._settings_replicas import InfluxReplica, ReplicaLagSettings
from foundation import InfluxAccess, check_broker_security
from foundation.settings import SettingsError, YamlSettings, build_settings

__all__ = ["ApiSettings", "MqttSettings", "load_settings"]

_Duration = Annotated[str, Field(pattern=r"^[1-9][0-9]{0,5}[smhdw]$")]
_Positive = Annotated[float, Field(gt=0)]
_Source = PydanticBaseSettingsSource
_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


class ApiSettings(YamlSettings):
    """Everything an API process needs; build it with :func:`load_settings` or directly."""

    model_config = SettingsConfigDict(
        env_prefix="SMARTCITY_API_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        validate_default=True,
    )

    # HTTP ----------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    #: Browser origins allowed by CORS (``["*"]`` allows any, refused outside demo mode).
    cors_origins: list[str] = Field(default_factory=list)
    #: Serve ``/metrics`` without a key (for a scraper on a private network).
    metrics_public: bool = False
    #: Demo mode: creates one key per role at start and prints them. Never in production.
    demo: bool = False

    # HTTPS ---------------------------------------------------------------------------------
    #: Serve HTTPS with this certificate chain (PEM) and its private key; both or neither.
    #: Unset: plain HTTP (behind a TLS-terminating proxy, or on loopback).
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None

    # Security ------------------------------------------------------------------------------
    #: SQLAlchemy URL of the operator database (keys, alert rules, acknowledgements).
    database_url: str = "sqlite:///var/api.sqlite3"
    #: Requests per second per API key (token bucket refill) and the bucket size.
    rate_limit_per_s: _Positive = 50.0
    rate_limit_burst: Annotated[int, Field(ge=1)] = 100
    #: Failed authentications per second per client address, and the bucket size.
    auth_failures_per_s: _Positive = 5.0
    auth_failures_burst: Annotated[int, Field(ge=1)] = 20
    #: How long a verified key stays cached in memory (a revoked key works this long at most).
    key_cache_s: _Positive = 10.0
    #: Live push: streams (WebSocket + SSE) one API key may hold open at once in one process;
    #: the next is refused (429), the open ones keep working.
    stream_max_per_key: Annotated[int, Field(ge=1, le=10_000)] = 10
    #: Live push: streams one API process serves at once, all keys together (each holds a
    #: queue of ``stream_queue`` events); the next is refused (503), the open ones keep working.
    stream_max_total: Annotated[int, Field(ge=1, le=100_000)] = 2000
    #: Serve Swagger UI at ``/docs`` (it loads its script from a CDN, so it is off unless
    #: asked for; ``None``: only in demo mode). ``/openapi.json`` is always served.
    openapi_docs: bool | None = None
    #: Answer ``GET /v1/live`` and ``/v1/live/{gateway}/{device}`` in the fast lane
    #: (:mod:`api._fastlane`: same auth, bodies, errors and metrics, without FastAPI's
    #: routing); ``false`` sends them through FastAPI like every other route.
    fast_lane: bool = True

    # Broker ------------------------------------------------------------------------------
    #: The broker and how the API gets in (:class:`api._settings_mqtt.MqttSettings`: host,
    #: port, username, password | password_file, tls {ca_file, cert_file, key_file,
    #: insecure}, client_id, connect_timeout_s, max_buffered, allow_insecure). The flat
    #: ``mqtt_*`` keys are deprecated aliases of these.
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    topic_root: str = "sc"

    # InfluxDB ------------------------------------------------------------------------------
    influx_url: str = Field(default="http://127.0.0.1:8086", pattern=r"^https?://")
    influx_database: Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$")] = (
        "smartcity"
    )
    influx_username: str | None = None
    influx_password: SecretStr | None = None
    #: CA bundle (PEM) an ``https://`` InfluxDB is verified against; unset: the system store.
    influx_ca_file: Path | None = None
    #: Client certificate and key (PEM, together), for a TLS proxy in front of InfluxDB that
    #: asks for one (influxd 1.x itself never does).
    influx_cert_file: Path | None = None
    influx_key_file: Path | None = None
    #: Development only: permits InfluxDB credentials over plain http to a host that is not
    #: on loopback.
    influx_allow_insecure: bool = False
    influx_timeout_s: _Positive = 10.0
    #: Cluster profile: the InfluxDB replicas to read from (:mod:`api._settings_replicas`;
    #: each fed by its own durable consumer). Reads go to a healthy replica whose consumer
    #: lag is within ``replica_lag.max_lag`` and fail over to the next on an error. Empty
    #: (the default): ``influx_url`` alone, as in the single-node profile.
    influx_replicas: list[InfluxReplica] = Field(default_factory=list)
    #: Where the replicas' consumer lag is read: NATS servers, credentials, tolerance.
    replica_lag: ReplicaLagSettings = Field(default_factory=ReplicaLagSettings)
    #: Warm the live state from readings newer than this at start.
    warm_window: _Duration = "1d"
    #: Warm-up reads at most this many series per measurement (the newest are not chosen:
    #: InfluxDB's series order), so a flood of invented series cannot stall the start.
    warm_max_series: Annotated[int, Field(ge=1, le=10_000_000)] = 100_000
    #: Completeness (from ingest bookkeeping) over this window, refreshed this often.
    completeness_window: _Duration = "1h"
    #: Completeness windows end this long ago, so batches still being written are not read
    #: half-way (their seqs would show as missing). Later batches count from a later round.
    completeness_settle_s: Annotated[float, Field(ge=0, le=3600)] = 10.0
    completeness_refresh_s: _Positive = 30.0
    #: Gap repair: this often, ask every online gateway whose batches are missing from the
    #: completeness window (ingest bookkeeping) to publish them again (``resend`` command).
    gap_repair: bool = True
    gap_repair_interval_s: _Positive = 60.0
    #: Most seqs asked of one gateway per round (the newest missing ones first).
    gap_repair_max_seqs: Annotated[int, Field(ge=1, le=10_000)] = 1000
    #: A seq already asked for is not asked again for this many rounds.
    gap_repair_reask_rounds: Annotated[int, Field(ge=1, le=1000)] = 5
    #: Gap repair looks only at the newest this-many seqs of a gateway (below its highest
    #: seq); a jump larger than this between two seqs is a reset (numbering starts again
    #: there), not a hole. Bounds the work a gateway's seqs can cause.
    gap_repair_window: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000
    #: Remote operations (``POST /v1/gateways/{gw}/commands/{name}``, engineer role): how long
    #: a call waits for the gateway's answer by default and at most (``?timeout_s=``), and
    #: how many calls one key may make per minute (burst: at once).
    command_timeout_s: Annotated[float, Field(gt=0, le=300)] = 10.0
    command_timeout_max_s: Annotated[float, Field(gt=0, le=300)] = 60.0
    command_rate_per_min: Annotated[float, Field(gt=0, le=6000)] = 30.0
    command_burst: Annotated[int, Field(ge=1, le=1000)] = 10
    #: Fleet view (``GET /v1/gateways?status=``): a gateway's clock is "off" past this offset
    #: from the API's (``sync-time-check``), its disk "low" under this many free bytes on the
    #: spool's filesystem, and it is "outdated" below ``fleet_version`` (unset: below the
    #: newest version any gateway reports).
    clock_off_threshold_s: Annotated[float, Field(gt=0, le=86_400)] = 2.0
    disk_low_bytes: Annotated[int, Field(ge=0)] = 200 * 2**20
    fleet_version: Annotated[str, Field(pattern=r"^[0-9A-Za-z.+!_-]{1,64}$")] | None = None

    # Behaviour -----------------------------------------------------------------------------
    #: Most points one history answer may hold; beyond it the request is refused with 400.
    max_points: Annotated[int, Field(ge=10, le=1_000_000)] = 10_000
    #: Longest history range.
    max_range_days: Annotated[int, Field(ge=1)] = 400
    #: A device with no reading for this long is shown offline.
    stale_after_s: _Positive = 300.0
    #: Free-flow speed of a traffic link when its device does not announce one (km/h).
    free_flow_speed_kmh: _Positive = 50.0

    # Areas ---------------------------------------------------------------------------------
    #: The city's areas as GeoJSON polygons (docs/api.md, "Areas"): a reading that carries
    #: its own position (a bus) is placed in the area containing it. Unset: such readings are
    #: in no area (their start-up area from the birth would be wrong). ``smartcity sim areas``
    #: writes the simulated city's map. Read and validated at start.
    areas_path: Path | None = None

    # Timetable (GTFS) --------------------------------------------------------------------
    #: The city's GTFS Schedule feed (a zip): served at ``/v1/transport/gtfs/static.zip`` and
    #: the timetable schedule adherence and GTFS-Realtime TripUpdates are computed against.
    #: Read and validated at start (a bad feed stops the start with the file, line and
    #: column). Unset: no timetable (adherence and TripUpdates answer 404).
    gtfs_static_path: Path | None = None
    #: Largest GTFS zip accepted, and the most its files may hold once unpacked.
    gtfs_max_bytes: Annotated[int, Field(ge=1024, le=2**31)] = 64 * 2**20
    gtfs_max_unpacked_bytes: Annotated[int, Field(ge=1024, le=2**33)] = 128 * 2**20
    #: A vehicle more than this many seconds behind its timetable is late.
    late_threshold_s: Annotated[float, Field(ge=0, le=86_400)] = 180.0
    #: A vehicle whose gap to the bus ahead on its route is under this share of the
    #: scheduled gap is bunched.
    bunched_ratio: Annotated[float, Field(gt=0, lt=1)] = 0.25
    #: A vehicle farther than this from its trip's path (straight lines between its stops)
    #: is off route: no delay is computed for it.
    gtfs_off_route_m: Annotated[float, Field(gt=0, le=5000)] = 150.0
    #: Live push: events queued per client before the oldest are dropped.
    stream_queue: Annotated[int, Field(ge=1, le=1_000_000)] = 1000
    #: Live push: a client whose socket accepts nothing for this long is disconnected.
    stream_send_timeout_s: _Positive = 10.0
    #: Live push: heartbeat interval (SSE comment / WebSocket ping event).
    stream_heartbeat_s: _Positive = 15.0
    #: Live push: offer WebSocket clients permessage-deflate. Off saves the API about half
    #: of its CPU per frame (small JSON events compress little) for more bytes on the wire.
    stream_ws_compression: bool = True
    #: Alert engine: how often staleness and pending durations are re-evaluated.
    alert_tick_s: _Positive = 1.0
    #: Alert engine: after an alert resolves, the same rule and subject is not raised again
    #: for this long (API clock, so device timestamps cannot shorten it): at most one episode
    #: per rule and subject per hold, however the readings flap. 0 turns the hold off.
    alert_min_hold_s: Annotated[float, Field(ge=0, le=86_400)] = 60.0
    #: Live state: most series (device, measurement, reading tags) held for one gateway;
    #: readings of new series past it are refused and counted.
    live_max_series_per_gateway: Annotated[int, Field(ge=1, le=1_000_000)] = 5000
    #: Live state: a series with no reading for this long is dropped (checked every minute).
    live_series_ttl_s: Annotated[float, Field(ge=1)] = 86_400.0
    #: Alert history (raised, acknowledged, resolved) is kept this many days.
    alert_history_days: Annotated[int, Field(ge=1, le=3650)] = 90
    #: The audit trail (``GET /v1/audit``: key, config, command, enrolment and alert
    #: operations) is kept this many days, then pruned (hourly).
    audit_keep_days: Annotated[int, Field(ge=1, le=36_500)] = 400
    #: Gateway enrolment (``/v1/gateways/{id}/enrolment``, ``POST /v1/enrol``): claim
    #: tokens, and the broker's dynamic-security admin that makes each gateway's user
    #: (:mod:`api._settings_enrol`; docs/security.md, "Enrolment").
    enrolment: EnrolSettings = Field(default_factory=EnrolSettings)

    # Dashboard -----------------------------------------------------------------------------
    #: Base map under the dashboard's drawing: an XYZ tile URL template with ``{z}``, ``{x}``,
    #: ``{y}`` and optionally ``{s}`` (subdomain) and ``{r}`` (retina suffix), e.g.
    #: ``https://tile.openstreetmap.org/{z}/{x}/{y}.png``. Unset: no tiles, the map is drawn
    #: from link geometry alone and the browser contacts no other host.
    map_tiles_url: str | None = None
    #: Attribution the tile provider requires (plain text), shown on the map. Required with
    #: ``map_tiles_url``.
    map_tiles_attribution: Annotated[str, Field(max_length=300)] = ""
    #: Values of ``{s}`` in the template.
    map_tiles_subdomains: Annotated[str, Field(pattern=r"^[a-z0-9]{0,8}$")] = "abc"
    #: Deepest zoom level the tile server has; the map scales that level up beyond it.
    map_tiles_max_zoom: Annotated[int, Field(ge=0, le=24)] = 19
    #: The city's IANA time zone (``Europe/Oslo``): the dashboard shows times in it, in the
    #: browser's language. Unset: the browser's own zone.
    city_timezone: str | None = None

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] | None = None

    @field_validator("topic_root")
    @classmethod
    def _root(cls, value: str) -> str:
        from telemetry import TopicError, Topics

        try:
            Topics(value)
        except TopicError as exc:
            raise ValueError(str(exc)) from exc
        return value

    @model_validator(mode="after")
    def _https(self) -> ApiSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together (HTTPS)")
        for key in ("tls_cert_file", "tls_key_file"):
            path: Path | None = getattr(self, key)
            if path is not None and not path.is_file():
                reason = "is not a file" if path.exists() else "file not found"
                raise ValueError(f"{key}: {reason}: {path}")
        return self

    @model_validator(mode="after")
    def _influx_access(self) -> ApiSettings:
        influx = self.influx
        influx.check("influx_")
        influx.check_security(
            allow_insecure=self.influx_allow_insecure,
            prefix="influx_",
            allow_key="influx_allow_insecure",
        )
        return self

    @model_validator(mode="after")
    def _replicas(self) -> ApiSettings:
        replicas = self.influx_replicas
        if not replicas:
            return self
        if "influx_url" in self.model_fields_set:
            raise ValueError("set influx_url or influx_replicas, not both")
        names = [r.name for r in replicas]
        if len(set(names)) != len(names):
            raise ValueError(f"influx_replicas: names must be distinct, got {names}")
        for r in replicas:
            r.check_security(
                allow_insecure=self.influx_allow_insecure,
                prefix=f"influx_replicas[{r.name}].",
                allow_key="influx_allow_insecure",
            )
        lag = self.replica_lag
        if any(r.durable for r in replicas) and not lag.servers:
            raise ValueError("influx_replicas name durable consumers: set replica_lag.servers")
        for server in lag.servers:
            check_broker_security(
                host=urlsplit(server).hostname or "", tls=lag.tls, has_password=lag.has_password,
                allow_insecure=self.influx_allow_insecure, tls_key="replica_lag.tls",
                allow_key="influx_allow_insecure",
            )
        return self

    @property
    def influx(self) -> InfluxAccess:
        """The ``influx_*`` access keys as the platform's InfluxDB access model. Built
        without validation: :meth:`_influx_access` judges it (naming the flat keys) when
        the settings are validated."""
        return InfluxAccess.model_construct(
            url=self.influx_url,
            username=self.influx_username,
            password=self.influx_password,
            ca_file=self.influx_ca_file,
            cert_file=self.influx_cert_file,
            key_file=self.influx_key_file,
        )

    @property
    def https(self) -> bool:
        return self.tls_cert_file is not None

    @field_validator("city_timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r} (an IANA name: Europe/Oslo)") from exc
        return value

    @field_validator("map_tiles_url")
    @classmethod
    def _tiles(cls, value: str | None) -> str | None:
        if value is None:
            return None
        _tile_origin(value)
        return value

    @model_validator(mode="after")
    def _secure(self) -> ApiSettings:
        if not self.demo and "*" in self.cors_origins:
            raise ValueError("cors_origins ['*'] is only allowed in demo mode")
        if self.demo and self.host not in _LOOPBACK:
            raise ValueError("demo mode listens on loopback only (host 127.0.0.1 or ::1)")
        if self.map_tiles_url is not None and not self.map_tiles_attribution.strip():
            raise ValueError("map_tiles_url needs map_tiles_attribution (providers require it)")
        return self

    @property
    def map_tiles_origin(self) -> str | None:
        """The CSP source the browser may load tiles from (``https://*.host`` with ``{s}``)."""
        return None if self.map_tiles_url is None else _tile_origin(self.map_tiles_url)

    @classmethod
    def ordered_sources(cls, flags: _Source, env: _Source, file: _Source) -> tuple[_Source, ...]:
        """The flat ``mqtt_*`` aliases are folded into ``mqtt`` (flags and file), and the
        deprecated flat environment names come after the nested ones."""
        return FoldedSource(flags), env, LegacyEnvSource(cls), FoldedSource(file)

    # Deprecated flat names, read-only (``settings.mqtt.*`` is the model).
    @property
    def mqtt_host(self) -> str:
        """Deprecated: ``mqtt.host``."""
        return self.mqtt.host

    @property
    def mqtt_port(self) -> int:
        """Deprecated: ``mqtt.port``."""
        return self.mqtt.port

    @property
    def mqtt_username(self) -> str | None:
        """Deprecated: ``mqtt.username``."""
        return self.mqtt.username

    @property
    def mqtt_client_id(self) -> str:
        """Deprecated: ``mqtt.client_id``."""
        return self.mqtt.client_id


_TEMPLATE_KEYS = frozenset({"z", "x", "y", "s", "r"})


def _tile_origin(template: str) -> str:
    """Validate an XYZ tile URL template and return its origin as a CSP source.

    Raise :class:`ValueError` with the reason.
    """
    from urllib.parse import urlsplit

    if any(c in template for c in " \t\"'<>;,\\"):
        raise ValueError("the tile URL holds a character URLs do not (space, quote, ;, ',')")
    keys = set(re.findall(r"\{([^}]*)\}", template))
    if not {"z", "x", "y"} <= keys:
        raise ValueError("the tile URL needs {z}, {x} and {y}")
    if unknown := keys - _TEMPLATE_KEYS:
        raise ValueError(f"unknown placeholder in the tile URL: {{{sorted(unknown)[0]}}}")
    parts = urlsplit(template.replace("{s}", "s0"))
    host = parts.hostname or ""
    if parts.scheme not in {"https", "http"} or not host or "{" in parts.netloc:
        raise ValueError("the tile URL must be http(s)://host/path with the placeholders")
    if parts.scheme == "http" and host not in _LOOPBACK:
        raise ValueError("tiles over plain http are only allowed from loopback; use https")
    if parts.username or parts.password:
        raise ValueError("the tile URL cannot hold credentials")
    port = f":{parts.port}" if parts.port else ""
    if "s0" in host:
        if not host.startswith("s0."):
            raise ValueError("{s} may only be the first label of the tile host")
        host = "*" + host[2:]
    return f"{parts.scheme}://{host}{port}"


def _without_none(values: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            cleaned = _without_none(value)
            if value and not cleaned:
                continue  # a block whose every flag was left out
            value = cleaned
        if value is not None:
            out[key] = value
    return out


def load_settings(path: Path | None = None, /, **overrides: Any) -> ApiSettings:
    """Settings from an optional YAML file, the environment and ``overrides`` (flags; ``None``
    values, and nested blocks left empty by them, are ignored).

    Raise :class:`ConfigError` naming the file, the key and the reason.
    """
    where = f"{path}: " if path is not None else ""
    try:
        return build_settings(ApiSettings, path, _without_none(overrides))
    except SettingsError as exc:
        raise ConfigError(f"{where}{exc.reason}") from exc
    except ValueError as exc:  # a deprecated alias given beside its nested key
        raise ConfigError(f"{where}{exc}") from exc
