"""The agent's config: YAML validated once, at start-up, into frozen typed models.

::

    gateway:   id, location, state_dir            who this gateway is, where it keeps state
    broker:    host, port, tls, credentials ...   the central broker (uplink)
    spool:     path, budget_bytes, synchronous    on-disk store-and-forward
    batch:     max_readings, max_bytes, max_age_s when a batch is sealed
    health:    interval_s                         periodic health message
    metrics:   port, host                         optional Prometheus endpoint
    devices:   [...]                              inventory announced in the birth message
    inputs:    [{type: mqtt, ...}, ...]           input plugins (by ``type``)
    processors: [{match: {...}, stages: [...]}]   per-channel processor chains

Every model forbids unknown keys, so a typo fails at start-up. :func:`load_config` reports
every problem with the file, the dotted key path and the reason (:class:`ConfigError`).
``docs/gateway-install.md`` is the reference.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Self

import yaml
from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from edge_agent._errors import ConfigError, ConfigIssue
from edge_agent._processors import STAGES, AggregateConfig, StageSpec
from foundation import BrokerAccess, check_broker_security
from telemetry import (
    ID_RE,
    MAX_PAYLOAD_BYTES,
    MAX_READINGS,
    NAME_RE,
    DeviceInfo,
    Location,
    TopicError,
    Topics,
)

__all__ = [
    "AgentConfig",
    "BatchConfig",
    "BrokerConfig",
    "DeviceConfig",
    "FirmwareInputConfig",
    "GatewayConfig",
    "HealthConfig",
    "InputSpec",
    "LocationConfig",
    "MatchConfig",
    "MetricsConfig",
    "ModbusInputConfig",
    "MqttInputConfig",
    "MqttSubscription",
    "NmeaInputConfig",
    "ProcessorRule",
    "SpoolConfig",
    "load_config",
    "parse_config",
    "remote_change_issues",
]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# pydantic searches a pattern; anchor it so the whole value must match.
_Id = Annotated[str, Field(pattern=rf"^(?:{ID_RE.pattern})$", max_length=64)]
_Name = Annotated[str, Field(pattern=rf"^(?:{NAME_RE.pattern})$")]


class LocationConfig(_Model):
    lat: Annotated[float, Field(ge=-90, le=90)]
    lon: Annotated[float, Field(ge=-180, le=180)]
    alt: float | None = None
    area: str | None = None

    def to_wire(self) -> Location:
        return Location(lat=self.lat, lon=self.lon, alt=self.alt, area=self.area)


class GatewayConfig(_Model):
    id: _Id
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
    client_id: _Id | None = None
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

    @field_validator("topic_root")
    @classmethod
    def _root(cls, v: str) -> str:
        try:
            Topics(v)
        except TopicError as exc:
            raise ValueError(exc.reason) from exc
        return v

    @model_validator(mode="after")
    def _secure(self) -> Self:
        check_broker_security(
            host=self.host,
            tls=self.tls,
            has_password=self.has_password,
            allow_insecure=self.allow_insecure,
        )
        if self.backoff_initial_s > self.backoff_max_s:
            raise ValueError("backoff_initial_s is greater than backoff_max_s")
        return self


class SpoolConfig(_Model):
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


class BatchConfig(_Model):
    max_readings: Annotated[int, Field(ge=1, le=MAX_READINGS)] = 500
    max_bytes: Annotated[int, Field(ge=1024, le=MAX_PAYLOAD_BYTES - 1024)] = 64 * 1024
    max_age_s: Annotated[float, Field(gt=0, le=3600)] = 1.0


class HealthConfig(_Model):
    interval_s: Annotated[float, Field(gt=0)] = 30.0


class MetricsConfig(_Model):
    port: Annotated[int, Field(ge=0, le=65535)] | None = None
    host: str = "127.0.0.1"


class DeviceConfig(_Model):
    id: _Id
    kind: Annotated[str, Field(min_length=1)]
    #: measurement -> field -> unit
    measurements: dict[_Name, dict[_Name, str]] = {}
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


# -- inputs --------------------------------------------------------------------------------

_TEMPLATE_RE: Final = re.compile(r"\{(\d+)\}")


class MqttSubscription(_Model):
    """One topic filter on the local broker and how its messages become readings.

    ``device`` and tag values may hold ``{N}``: the N-th level (0-based) of the topic.
    ``format: json`` takes each field from a JSON path (``$.a.b[0]``); ``format: number``
    reads the whole payload as one number into ``field``.
    """

    topic: Annotated[str, Field(min_length=1)]
    device: Annotated[str, Field(min_length=1)]
    measurement: _Name
    format: Literal["json", "number"] = "json"
    fields: dict[_Name, str] = {}
    field: _Name | None = None
    timestamp: str | None = None
    timestamp_unit: Literal["s", "ms", "us", "ns"] = "ns"
    tags: dict[_Name, str] = {}

    @model_validator(mode="after")
    def _shape(self) -> Self:
        if self.format == "json" and not self.fields:
            raise ValueError("format json needs fields (name: JSON path)")
        if self.format == "number" and self.field is None:
            raise ValueError("format number needs field")
        if self.format == "number" and self.timestamp is not None:
            raise ValueError("format number has no timestamp path")
        if "#" in self.topic[:-1] or any(
            ("+" in lvl or "#" in lvl) and len(lvl) > 1 for lvl in self.topic.split("/")
        ):
            raise ValueError(f"topic filter {self.topic!r} is not valid")
        return self


class MqttInputConfig(BrokerAccess):
    """Subscriptions on the gateway's local broker (QoS 1, persistent session, acked only
    once the readings are in the spool). Credentials and ``tls`` as for the uplink
    (:class:`foundation._broker.BrokerAccess`), with the same rules."""

    type: Literal["mqtt"]
    name: _Id
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    client_id: _Id | None = None
    #: Development only: permits ``tls.insecure`` and passwords over plain TCP to non-local hosts.
    allow_insecure: bool = False
    subscriptions: Annotated[list[MqttSubscription], Field(min_length=1)]

    @model_validator(mode="after")
    def _secure(self) -> Self:
        check_broker_security(
            host=self.host,
            tls=self.tls,
            has_password=self.has_password,
            allow_insecure=self.allow_insecure,
        )
        return self


class SimulatedInputConfig(_Model):
    """Synthetic readings (sine + noise) for bench tests and demos without hardware."""

    type: Literal["simulated"]
    name: _Id
    devices: Annotated[int, Field(ge=1)] = 1
    device_prefix: str = "sim"
    measurement: _Name = "Simulated"
    fields: Annotated[list[_Name], Field(min_length=1)] = ["value"]
    rate_hz: Annotated[float, Field(gt=0)] = 1.0


class SerialLine(_Model):
    """A serial link: a tty, a pty, or any pyserial URL (``socket://``, ``rfc2217://``)."""

    url: Annotated[str, Field(min_length=1)]
    baudrate: Annotated[int, Field(gt=0)] = 115200
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1


class FirmwareInputConfig(_Model):
    """Devices speaking the project firmware protocol on one serial link (firmware_bridge)."""

    type: Literal["firmware"]
    name: _Id
    serial: SerialLine
    #: firmware device id -> device name (others are ``fw-<id as 8 hex digits>``)
    device_names: dict[int, _Id] = {}
    max_pending_readings: Annotated[int, Field(ge=1)] = 10_000

    @model_validator(mode="after")
    def _bridge(self) -> Self:
        self.to_bridge()  # firmware_bridge.ConfigError is a ValueError: reported with the path
        return self

    def to_bridge(self) -> Any:
        from firmware_bridge import FirmwareLinkConfig

        return FirmwareLinkConfig(
            serial=_serial(self.serial, self.name),
            device_names=dict(self.device_names),
            max_pending_readings=self.max_pending_readings,
        )


class NmeaInputConfig(_Model):
    """A GPS receiver (NMEA 0183) on a serial link; one ``Vehicle`` reading per fix."""

    type: Literal["nmea"]
    name: _Id
    serial: SerialLine
    device: _Id
    measurement: _Name = "Vehicle"

    @model_validator(mode="after")
    def _bridge(self) -> Self:
        self.to_bridge()
        return self

    def to_bridge(self) -> Any:
        from firmware_bridge import NmeaLinkConfig

        return NmeaLinkConfig(
            serial=_serial(self.serial, self.name),
            device=self.device,
            measurement=self.measurement,
        )


class ModbusTcp(_Model):
    host: Annotated[str, Field(min_length=1)]
    port: Annotated[int, Field(ge=1, le=65535)] = 502


class ModbusInputConfig(_Model):
    """One Modbus meter (TCP or RTU) polled per register group (firmware_bridge maps)."""

    type: Literal["modbus"]
    name: _Id
    device: _Id
    tcp: ModbusTcp | None = None
    rtu: SerialLine | None = None
    #: A shipped map name (``eastron-sdm630``) or a path to a map file.
    register_map: Annotated[str, Field(min_length=1)]
    unit_id: Annotated[int, Field(ge=0, le=247)] = 1
    timeout_s: Annotated[float, Field(gt=0)] = 1.0
    #: Poll interval overrides per register group name, in seconds.
    intervals: dict[str, Annotated[float, Field(gt=0)]] = {}
    tags: dict[_Name, str] = {}

    @model_validator(mode="after")
    def _bridge(self) -> Self:
        if (self.tcp is None) == (self.rtu is None):
            raise ValueError("set exactly one of tcp and rtu")
        self.to_bridge()
        return self

    def to_bridge(self) -> Any:
        from firmware_bridge import (
            ModbusPollerConfig,
            ModbusSerialTarget,
            ModbusTcpTarget,
            load_register_map,
        )

        target: Any
        if self.tcp is not None:
            target = ModbusTcpTarget(host=self.tcp.host, port=self.tcp.port)
        elif self.rtu is not None:
            target = ModbusSerialTarget(
                port=self.rtu.url,
                baudrate=self.rtu.baudrate,
                parity=self.rtu.parity,
                stopbits=self.rtu.stopbits,
            )
        else:
            raise ValueError("set exactly one of tcp and rtu")
        return ModbusPollerConfig(
            device=self.device,
            target=target,
            register_map=load_register_map(self.register_map),
            unit_id=self.unit_id,
            timeout=self.timeout_s,
            intervals=dict(self.intervals),
            tags=dict(self.tags),
        )


def _serial(line: SerialLine, name: str) -> Any:
    from firmware_bridge import SerialConfig

    return SerialConfig(
        url=line.url,
        baudrate=line.baudrate,
        parity=line.parity,
        stopbits=float(line.stopbits),
        name=name,
    )


InputSpec = Annotated[
    MqttInputConfig
    | SimulatedInputConfig
    | FirmwareInputConfig
    | NmeaInputConfig
    | ModbusInputConfig,
    Field(discriminator="type"),
]
INPUT_TYPES: Final = frozenset({"mqtt", "simulated", "firmware", "nmea", "modbus"})


# -- processors ------------------------------------------------------------------------------


class MatchConfig(_Model):
    """Which channels a rule takes (shell-style globs)."""

    device: str = "*"
    measurement: str = "*"
    field: str = "*"

    def matches(self, device: str, measurement: str, field: str) -> bool:
        return (
            fnmatch.fnmatchcase(device, self.device)
            and fnmatch.fnmatchcase(measurement, self.measurement)
            and fnmatch.fnmatchcase(field, self.field)
        )


class ProcessorRule(_Model):
    match: MatchConfig = MatchConfig()
    stages: Annotated[list[StageSpec], Field(min_length=1)]

    @model_validator(mode="after")
    def _aggregate_last(self) -> Self:
        for i, st in enumerate(self.stages[:-1]):
            if isinstance(st, AggregateConfig):
                raise ValueError(f"aggregate (stage {i}) must be the last stage")
        return self


class AgentConfig(_Model):
    gateway: GatewayConfig
    broker: BrokerConfig
    spool: SpoolConfig = SpoolConfig()
    batch: BatchConfig = BatchConfig()
    health: HealthConfig = HealthConfig()
    metrics: MetricsConfig = MetricsConfig()
    devices: list[DeviceConfig] = []
    inputs: list[InputSpec] = []
    #: First matching rule wins; channels no rule matches pass through unchanged.
    processors: list[ProcessorRule] = []
    #: How often staged samples run through the processors.
    tick_s: Annotated[float, Field(gt=0, le=10)] = 0.1

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
        self._shared_lines()
        return self

    def _shared_lines(self) -> None:
        """Several Modbus meters may share an RS-485 port (one bus); nothing else may."""
        owners: dict[str, tuple[str, str, SerialLine]] = {}  # url -> (kind, input, line)
        for spec in self.inputs:
            if isinstance(spec, ModbusInputConfig) and spec.rtu is not None:
                kind, line = "modbus", spec.rtu
            elif isinstance(spec, FirmwareInputConfig | NmeaInputConfig):
                kind, line = spec.type, spec.serial
            else:
                continue
            first = owners.setdefault(line.url, (kind, spec.name, line))
            if first[1] == spec.name:
                continue
            if kind != "modbus" or first[0] != "modbus":
                raise ValueError(
                    f"inputs {first[1]!r} and {spec.name!r} both use serial port {line.url!r}: "
                    "only Modbus meters can share a port (one RS-485 bus)"
                )
            theirs = first[2]
            if (line.baudrate, line.parity, line.stopbits) != (
                theirs.baudrate, theirs.parity, theirs.stopbits
            ):
                raise ValueError(
                    f"inputs {first[1]!r} and {spec.name!r} share RS-485 port {line.url!r} "
                    f"with different settings ({theirs.baudrate} {theirs.parity} "
                    f"{theirs.stopbits} vs {line.baudrate} {line.parity} {line.stopbits})"
                )

    @property
    def spool_path(self) -> Path:
        return self.spool.path or self.gateway.state_dir / "spool.sqlite3"

    @property
    def client_id(self) -> str:
        return self.broker.client_id or f"edge-{self.gateway.id}"


_TAGS: Final = frozenset(STAGES) | INPUT_TYPES


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
        sections += [i for i in inputs if isinstance(i, dict) and i.get("type") == "mqtt"]
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
    """Read and validate a YAML config file; raise :class:`ConfigError` naming every problem."""
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
    return parse_config(data, source=source, base_dir=p.resolve().parent)


#: Sections a remote config cannot change: they would cut the uplink or move the spool.
_FIXED_SECTIONS: Final = ("broker", "spool", "metrics")


def remote_change_issues(running: AgentConfig, desired: AgentConfig) -> list[ConfigIssue]:
    """Why ``desired`` cannot replace ``running`` remotely (empty when it can)."""
    issues = [
        ConfigIssue(section, "cannot be changed remotely; edit the file on the gateway")
        for section in _FIXED_SECTIONS
        if getattr(running, section) != getattr(desired, section)
    ]
    if running.gateway.id != desired.gateway.id:
        issues.append(ConfigIssue("gateway.id", "cannot be changed remotely"))
    if running.gateway.state_dir != desired.gateway.state_dir:
        issues.append(ConfigIssue("gateway.state_dir", "cannot be changed remotely"))
    return issues
