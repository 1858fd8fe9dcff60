"""The agent's config: YAML validated once, at start-up, into frozen typed models.

::

    gateway:   id, location, state_dir            who this gateway is, where it keeps state
    broker:    host, port, tls, credentials ...   the central broker (uplink)
    spool:     path, budget_bytes, synchronous    on-disk store-and-forward
    batch:     max_readings, max_bytes, max_age_s when a batch is sealed
    health:    interval_s                         periodic health message
    metrics:   port, host                         local endpoint (/metrics /status), 9108
    update:    trusted_keys                       keys a release must be signed with
    devices:   [...]                              inventory announced in the birth message
    inputs:    [{type: mqtt, ...}, ...]           input plugins, by ``type`` (edge_agent.inputs)
    processors: [{match: {...}, stages: [...]}]   per-channel chains (edge_agent.processors)

Every model forbids unknown keys, so a typo fails at start-up. :func:`load_config` reports
every problem with the file, the dotted key path and the reason (:class:`ConfigError`).
The inputs' and stages' models live with their plugins; their unions come from the
registries (:data:`edge_agent.inputs.INPUTS`, :data:`edge_agent.processors.STAGES`).
``docs/gateway-install.md`` is the reference.
"""

# ruff: noqa: RUF012 - pydantic copies mutable defaults per instance; ruff cannot see that
# FrozenModel (edge_agent._model) is a pydantic BaseModel.
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Final, Literal, Self

import yaml
from pydantic import (
    AfterValidator,
    ByteSize,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from edge_agent._errors import ConfigError, ConfigIssue
from edge_agent._expand import expand_references
from edge_agent._model import FrozenModel, Id, Name
from edge_agent._signing import parse_public_key
from edge_agent.inputs import INPUTS, InputSpec, check_inputs
from edge_agent.processors import STAGES, ProcessorRule
from foundation import BrokerAccess, check_broker_security
from foundation.mqtt import parse_address
from telemetry import (
    MAX_PAYLOAD_BYTES,
    MAX_READINGS,
    DeviceInfo,
    Location,
    TopicError,
    Topics,
    check_cluster_id,
)

__all__ = [
    "AgentConfig",
    "BatchConfig",
    "BrokerConfig",
    "DeviceConfig",
    "GatewayConfig",
    "HealthConfig",
    "LocationConfig",
    "MetricsConfig",
    "SpoolConfig",
    "UpdateConfig",
    "load_config",
    "parse_config",
]


class LocationConfig(FrozenModel):
    lat: Annotated[float, Field(ge=-90, le=90)]
    lon: Annotated[float, Field(ge=-180, le=180)]
    alt: float | None = None
    area: str | None = None

    def to_wire(self) -> Location:
        return Location(lat=self.lat, lon=self.lon, alt=self.alt, area=self.area)


class GatewayConfig(FrozenModel):
    id: Id
    location: LocationConfig | None = None
    #: Spool, persisted remote config. Relative paths are relative to the config file.
    state_dir: Path = Path("/var/lib/smartcity-edge")

    @field_validator("id")
    @classmethod
    def _no_underscore(cls, v: str) -> str:
        if v.startswith("_"):
            raise ValueError("gateway ids cannot start with '_'")
        return v


class BrokerConfig(BrokerAccess):
    """The central broker. ``username``, ``password`` / ``password_file`` and ``tls``
    (:class:`foundation._broker.BrokerTls`) come from :class:`foundation._broker.BrokerAccess`."""

    host: Annotated[str, Field(min_length=1)]
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    topic_root: str = "sc"
    client_id: Id | None = None
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    #: MQTT v5 Session Expiry Interval. The uplink connects with clean start off, so config
    #: and commands published while the gateway is offline for less than this are queued by
    #: the broker (within its ``max_queued_messages``) and delivered on reconnect. 0: the
    #: session ends with the connection.
    session_expiry_s: Annotated[int, Field(ge=0, le=0xFFFFFFFE)] = 24 * 3600
    #: Development only: permits ``tls.insecure`` and passwords over plain TCP to non-local hosts.
    allow_insecure: bool = False
    backoff_initial_s: Annotated[float, Field(gt=0)] = 0.5
    backoff_max_s: Annotated[float, Field(gt=0)] = 60.0
    connect_timeout_s: Annotated[float, Field(gt=0)] = 15.0
    #: Batches published and not yet acknowledged (PUBACK) at any time.
    inflight_window: Annotated[int, Field(ge=1, le=1000)] = 32
    #: ``mqtt5`` (mosquitto, the default) or ``mqtt311`` (the cluster profile: a NATS
    #: JetStream cluster speaks only 3.1.1; no v5 properties, so ``session_expiry_s`` is not
    #: sent and commands carry their reply address in the body, docs/wire-protocol.md).
    protocol: Literal["mqtt5", "mqtt311"] = "mqtt5"
    #: More broker addresses (``host:port``, or ``host`` for port 1883) to fail over to, in
    #: order after ``host:port``: the other nodes of a cluster (docs/cluster.md).
    hosts: tuple[str, ...] = ()

    @property
    def addresses(self) -> tuple[tuple[str, int], ...]:
        """``host:port`` then every ``hosts`` entry, as (host, port)."""
        return ((self.host, self.port), *(parse_address(h) for h in self.hosts))

    @field_validator("topic_root")
    @classmethod
    def _root(cls, v: str) -> str:
        try:
            Topics(v)
        except TopicError as exc:
            raise ValueError(exc.reason) from exc
        return v

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for h in v:
            parse_address(h)
        return v

    @model_validator(mode="after")
    def _secure(self) -> Self:
        for host, _port in self.addresses:
            check_broker_security(
                host=host,
                tls=self.tls,
                has_password=self.has_password,
                allow_insecure=self.allow_insecure,
            )
        if len(set(self.addresses)) != len(self.addresses):
            raise ValueError("hosts: an address is listed twice (host:port included)")
        if self.protocol == "mqtt311":
            for level in self.topic_root.split("/"):
                try:
                    check_cluster_id("topic_root level", level)
                except TopicError as exc:
                    raise ValueError(exc.reason) from exc
        if self.backoff_initial_s > self.backoff_max_s:
            raise ValueError("backoff_initial_s is greater than backoff_max_s")
        return self


class SpoolConfig(FrozenModel):
    #: Default: ``<state_dir>/spool.sqlite3``.
    path: Path | None = None
    #: Payload bytes kept at most; past it the oldest batches are dropped (counted).
    budget_bytes: ByteSize = ByteSize(256 * 1024 * 1024)
    #: ``full`` survives power cuts (fsync per sealed batch), ``normal`` only process crashes.
    synchronous: Literal["full", "normal"] = "full"
    #: The processors' state and unsealed readings are committed at most this often (and
    #: with every sealed batch). A crash loses at most this much of the samples in open
    #: windows; local-MQTT messages wait this long at most for their ack. 0: every tick
    #: (``tick_s``), ten commits a second at the default: more SD-card writes and fsyncs.
    checkpoint_interval_s: Annotated[float, Field(ge=0, le=60)] = 1.0
    #: Acknowledged batches are kept this long (within ``budget_bytes``, dropped before any
    #: unsent batch when it is full) so the platform can ask for them again with the
    #: ``resend`` command. 0: deleted on their PUBACK.
    keep_delivered_s: Annotated[float, Field(ge=0, le=7 * 86400)] = 3600.0


class BatchConfig(FrozenModel):
    max_readings: Annotated[int, Field(ge=1, le=MAX_READINGS)] = 500
    max_bytes: Annotated[int, Field(ge=1024, le=MAX_PAYLOAD_BYTES - 1024)] = 64 * 1024
    max_age_s: Annotated[float, Field(gt=0, le=3600)] = 1.0


class HealthConfig(FrozenModel):
    #: At least 0.1 s: the health message goes over the uplink (a remote config could
    #: otherwise turn it into a busy loop).
    interval_s: Annotated[float, Field(ge=0.1, le=86400)] = 30.0


class MetricsConfig(FrozenModel):
    """The local endpoint's TCP listener (``/metrics``, ``/healthz``, ``/status``; on by
    default, loopback only). ``port: null`` turns it off (the unix socket
    ``<state_dir>/agent.sock`` still serves); ``0`` picks a free port."""

    port: Annotated[int, Field(ge=0, le=65535)] | None = 9108
    host: str = "127.0.0.1"


def _public_key(value: str) -> str:
    parse_public_key(value)  # ValueError naming what is wrong with it
    return value.strip()


class UpdateConfig(FrozenModel):
    """How ``smartcity edge update`` judges a release (docs/gateway-install.md, "Signed
    releases"). Read by the root-side updater from this file only."""

    #: Ed25519 public keys (base64, as ``smartcity edge release keygen`` writes them to
    #: ``<key>.pub``; ``${file:/etc/smartcity-edge/release.pub}`` reads one from a file).
    #: Set: a release must carry a ``.sig`` made with one of them, or it is refused before
    #: anything is installed. Empty: the sha256 alone is checked.
    trusted_keys: tuple[Annotated[str, AfterValidator(_public_key)], ...] = ()


class DeviceConfig(FrozenModel):
    id: Id
    kind: Annotated[str, Field(min_length=1)]
    #: measurement -> field -> unit
    measurements: dict[Name, dict[Name, str]] = {}
    location: LocationConfig | None = None
    meta: dict[str, str] = {}

    def to_wire(self) -> DeviceInfo:
        return DeviceInfo(
            id=self.id,
            kind=self.kind,
            measurements={m: dict(f) for m, f in self.measurements.items()},
            location=None if self.location is None else self.location.to_wire(),
            meta=dict(self.meta),
        )


class AgentConfig(FrozenModel):
    gateway: GatewayConfig
    broker: BrokerConfig
    spool: SpoolConfig = SpoolConfig()
    batch: BatchConfig = BatchConfig()
    health: HealthConfig = HealthConfig()
    metrics: MetricsConfig = MetricsConfig()
    update: UpdateConfig = UpdateConfig()
    devices: list[DeviceConfig] = []
    inputs: list[InputSpec] = []
    #: First matching rule wins; channels no rule matches pass through unchanged.
    processors: list[ProcessorRule] = []
    #: Channels (device, measurement, tags, field) that get processor state. Device names and
    #: tags may come from a local sensor's topic, so this bounds memory and the checkpoint;
    #: past it new channels' samples pass unprocessed (counted as ``channel_limit``).
    processors_max_channels: Annotated[int, Field(ge=1, le=1_000_000)] = 20_000
    #: How often staged samples run through the processors (at least 10 ms: no busy loop).
    tick_s: Annotated[float, Field(ge=0.01, le=10)] = 0.1

    @model_validator(mode="after")
    def _unique_names(self) -> Self:
        names = [i.name for i in self.inputs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"input names must be unique: {', '.join(dupes)}")
        if int(self.spool.budget_bytes) < 2 * self.batch.max_bytes:
            raise ValueError(
                f"spool.budget_bytes ({int(self.spool.budget_bytes)}) must hold at least two "
                f"batches of batch.max_bytes ({self.batch.max_bytes})"
            )
        ids = [d.id for d in self.devices]
        dupes = sorted({n for n in ids if ids.count(n) > 1})
        if dupes:
            raise ValueError(f"device ids must be unique: {', '.join(dupes)}")
        check_inputs(self.inputs)  # e.g. serial ports: only Modbus meters share one
        if self.broker.protocol == "mqtt311":  # the cluster profile: ids must map to subjects
            for kind, value in (("gateway.id", self.gateway.id), ("client_id", self.client_id)):
                try:
                    check_cluster_id(kind, value)
                except TopicError as exc:
                    raise ValueError(exc.reason) from exc
        return self

    @property
    def spool_path(self) -> Path:
        return self.spool.path or self.gateway.state_dir / "spool.sqlite3"

    @property
    def client_id(self) -> str:
        return self.broker.client_id or f"edge-{self.gateway.id}"


_TAGS: Final = frozenset(STAGES) | frozenset(INPUTS)
#: Input types whose config is broker access (credential and TLS file paths to resolve).
_BROKER_INPUTS: Final = frozenset(
    name for name, plugin in INPUTS.items() if issubclass(plugin.config, BrokerAccess)
)


def _loc_to_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    prev: int | str | None = None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(prev, int) and part in _TAGS:
            pass  # discriminator tag pydantic inserts after a list index
        else:
            out += f".{part}" if out else str(part)
        prev = part
    return out


def _issues(exc: ValidationError) -> list[ConfigIssue]:
    issues = []
    for err in exc.errors(include_url=False):
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (not part of the config schema)"
        elif err["type"] == "missing":
            msg = "required key is missing"
        issues.append(ConfigIssue(_loc_to_path(tuple(err["loc"])), msg))
    return issues


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    """Make relative file paths in the raw config relative to ``base`` (the file's dir)."""

    def fix(section: Any, key: str) -> None:
        if isinstance(section, dict) and isinstance(section.get(key), str):
            p = Path(section[key]).expanduser()
            section[key] = str(p if p.is_absolute() else base / p)

    fix(data.get("gateway"), "state_dir")
    fix(data.get("spool"), "path")
    sections = [data.get("broker")]
    inputs = data.get("inputs")
    if isinstance(inputs, list):
        sections += [i for i in inputs if isinstance(i, dict) and i.get("type") in _BROKER_INPUTS]
    if isinstance(inputs, list):
        for i in inputs:
            if (
                isinstance(i, dict)
                and i.get("type") == "modbus"
                and isinstance(i.get("register_map"), str)
                and i["register_map"].endswith((".yaml", ".yml"))
            ):
                fix(i, "register_map")  # a file path, not a shipped map name
    for section in sections:
        fix(section, "password_file")
        if isinstance(section, dict):
            for key in ("ca_file", "cert_file", "key_file"):
                fix(section.get("tls"), key)


def parse_config(data: object, *, source: str, base_dir: Path | None = None) -> AgentConfig:
    """Validate an already-parsed config (a dict from YAML or a remote JSON config)."""
    if not isinstance(data, dict):
        raise ConfigError(source, [ConfigIssue("", "the config must be a mapping")])
    if base_dir is not None:
        data = dict(data)
        _resolve_paths(data, base_dir)
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, _issues(exc)) from exc


def load_config(path: str | Path) -> AgentConfig:
    """Read and validate a YAML config file; raise :class:`ConfigError` naming every problem.

    ``${VAR}`` / ``${file:PATH}`` references are expanded first; relative paths (state_dir,
    spool.path, TLS and password files, register-map files) are relative to the file's folder.
    """
    p = Path(path)
    source = str(p)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, [ConfigIssue("", f"cannot read: {exc.strerror}")]) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, [ConfigIssue(where, f"not valid YAML: {problem}")]) from exc
    base_dir = p.resolve().parent
    # ${VAR} and ${file:PATH} in the file only (edge_agent._expand); never in remote configs.
    data, issues = expand_references(data, base_dir=base_dir)
    if issues:
        raise ConfigError(source, issues)
    return parse_config(data, source=source, base_dir=base_dir)
