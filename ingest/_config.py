"""Typed configuration of an ingest worker, validated once at start-up.

Sources, highest priority first: explicit overrides (command-line flags), environment
variables (``SMARTCITY_INGEST_``, nested keys joined by ``__``, for example
``SMARTCITY_INGEST_INFLUX__URL``), the YAML file, the defaults below. Every model forbids
unknown keys, so a typo fails at start-up with the file, the key and the reason.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from foundation import BrokerAccess, BrokerTls, InfluxAccess, check_broker_security
from foundation.settings import SettingsError, YamlSettings, build_settings
from ingest._errors import ConfigError
from telemetry import TopicError, check_cluster_id

__all__ = [
    "BatchConfig",
    "DeadLetterBudgetConfig",
    "DeadLetterConfig",
    "DeadLetterStreamConfig",
    "InfluxConfig",
    "IngestConfig",
    "IntakeConfig",
    "JetStreamConfig",
    "MqttConfig",
    "RetentionConfig",
    "RetryConfig",
    "TlsConfig",
    "load_config",
]

_Id = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")]
_Seconds = Annotated[float, Field(gt=0)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


#: The ``mqtt.tls`` block: the platform's one TLS model (name kept for the public API).
TlsConfig = BrokerTls


class MqttConfig(BrokerAccess):
    """The broker and the shared subscription. ``username``, ``password`` /
    ``password_file`` and ``tls`` come from :class:`foundation._broker.BrokerAccess`."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    #: Stable per worker (``ingest-0``, ``ingest-1``...): the broker keeps the session, and
    #: its queued share, under this id. A replacement for a dead worker reuses its id.
    client_id: _Id = "ingest-0"
    #: Share group: workers in the same group split the messages.
    group: _Id = "ingest"
    topic_root: str = "sc"
    keepalive: Annotated[int, Field(ge=5, le=65535)] = 30
    #: How long the broker keeps this worker's session (and queues its share) while it is
    #: offline. Must cover the longest outage a supervisor may take to restart it.
    session_expiry: Annotated[int, Field(ge=60, le=0xFFFFFFFE)] = 7 * 24 * 3600
    #: MQTT v5 Receive Maximum: unacknowledged messages the broker may have in flight to this
    #: worker. It bounds the worker's memory (receive_maximum x readings per message) and must
    #: cover the batches being formed and written; see docs/ingest.md.
    receive_maximum: Annotated[int, Field(ge=2, le=65535)] = 1000
    #: Service name of the dead-letter topic ``{root}/v1/_sys/deadletter/{service}``.
    deadletter_service: _Id = "ingest"
    reconnect_min_delay: Annotated[int, Field(ge=1)] = 1
    reconnect_max_delay: Annotated[int, Field(ge=1)] = 30


class DeadLetterStreamConfig(_Model):
    """The dead-letter stream of the ``jetstream`` source (``jetstream.deadletters``): every
    dead-letter record is stored there, replicated, before the refused message is
    acknowledged (a JetStream publish whose PubAck is awaited). Created or verified at start.
    The record is also an ``ingest_deadletter`` point in InfluxDB, as in the single-node
    profile. Subject: the dead-letter topic's (``<root>.v1._sys.deadletter.<service>``)."""

    #: Stream name; ``null``: no stream (records go to InfluxDB and, best effort, to core
    #: NATS subscribers of the dead-letter topic, as before).
    stream: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")] | None = "SC_DEADLETTERS"
    #: Replicas of the stream (``null``: as many as the consumed stream has).
    replicas: Annotated[int, Field(ge=1, le=5)] | None = None
    #: Limits retention: the oldest records go first past either limit.
    max_bytes: Annotated[int, Field(ge=1024**2)] = 1024**3
    max_age_days: Annotated[float, Field(gt=0, le=3650)] = 30.0
    #: Create the stream when it is missing (otherwise a missing one stops the worker).
    create: bool = True


class JetStreamConfig(BrokerAccess):
    """The ``jetstream`` source (``source: jetstream``, the cluster profile, docs/cluster.md):
    a durable pull consumer on the stream where the NATS server's MQTT gateway stores every
    QoS 1 publish, shared by all workers. ``username``, ``password`` / ``password_file`` and
    ``tls`` come from :class:`foundation._broker.BrokerAccess`; the topic root, the worker id
    and the dead-letter service come from ``mqtt``."""

    #: NATS client URLs of the cluster's nodes (``nats://host:port``, ``tls://host:port``).
    servers: tuple[Annotated[str, Field(pattern=r"^(nats|tls)://[^/\s]+$")], ...] = (
        "nats://127.0.0.1:4222",
    )
    #: The stream the MQTT gateway writes to (nats-server: ``$MQTT_msgs``).
    stream: str = "$MQTT_msgs"
    #: The durable consumer every worker of the pool pulls from. It must exist before the
    #: gateways publish: ``$MQTT_msgs`` keeps a message only for the consumers it has then.
    durable: _Id = "ingest"
    #: Delivered and not yet acknowledged messages, over the whole pool (the in-flight bound).
    max_ack_pending: Annotated[int, Field(ge=2, le=1_000_000)] = 1000
    #: Redelivery after this long without an ack. Held messages are marked in progress every
    #: third of it while InfluxDB retries, so it only has to outlast one slow write.
    ack_wait: Annotated[float, Field(ge=5, le=3600)] = 60.0
    #: Consumer replicas (``None``: those of the stream).
    replicas: Annotated[int, Field(ge=1, le=5)] | None = None
    #: Create the consumer when it is missing (otherwise a missing one stops the worker).
    create: bool = True
    #: Where dead letters are stored before the refused message is acknowledged.
    deadletters: DeadLetterStreamConfig = DeadLetterStreamConfig()


class RetentionConfig(_Model):
    """The retention policy written to (created when missing if ``create`` is set)."""

    name: _Id = "autogen"
    duration: str = Field(default="0s", pattern=r"^(INF|0s|\d+[mhdw])$")
    shard_duration: str | None = Field(default=None, pattern=r"^\d+[mhdw]$")
    create: bool = True
    default: bool = True


class InfluxConfig(InfluxAccess):
    """Where readings go. ``api: v1`` is the InfluxQL/line-protocol API every version speaks.
    ``url``, ``username``, ``password``, ``token``, the TLS files, ``verify_tls`` and their
    rules come from :class:`foundation.InfluxAccess`, as the API spells them."""

    api: Literal["v1", "v2"] = "v1"
    database: _Id = "smartcity"
    retention: RetentionConfig = RetentionConfig()
    create_database: bool = True
    org: str | None = None
    bucket: str | None = None
    gzip: bool = False
    timeout: _Seconds = 10.0

    @model_validator(mode="after")
    def _v2(self) -> InfluxConfig:
        if self.api == "v2" and (self.token is None or not self.org or not self.bucket):
            raise ValueError("api v2 needs token, org and bucket")
        return self


class RetryConfig(_Model):
    """Capped, jittered exponential backoff for retryable write failures.

    Retry ``n`` (from 0) waits between half and all of
    ``min(max_delay, initial_delay * multiplier**n)`` (:class:`foundation.Backoff`), and at
    least what a ``Retry-After`` header asks (up to 300 s).
    """

    initial_delay: _Seconds = 0.2
    max_delay: _Seconds = 15.0
    multiplier: Annotated[float, Field(ge=1.0)] = 2.0


class BatchConfig(_Model):
    """How readings are grouped into writes."""

    #: Flush when a batch holds this many readings...
    max_readings: Annotated[int, Field(ge=1, le=500_000)] = 5000
    #: ...or when its oldest message has waited this long.
    max_age: _Seconds = 0.2
    #: Writes in flight at once (each up to ``max_readings``).
    max_concurrent_writes: Annotated[int, Field(ge=1, le=64)] = 3
    #: Readings decoded but not yet written. Past it the worker stops taking messages from
    #: its inbox, the inbox fills, and the network thread stops reading the socket (TCP
    #: backpressure), which holds even against a broker that overshoots Receive Maximum.
    max_in_flight_readings: Annotated[int, Field(ge=1)] = 100_000
    retry: RetryConfig = RetryConfig()
    #: On shutdown, how long to keep writing what was received before giving up; anything
    #: not written by then is left unacknowledged for the broker to redeliver.
    drain_timeout: _Seconds = 10.0


class IntakeConfig(_Model):
    """What a reading must satisfy before it is stored, beyond the wire contract."""

    #: Seconds a reading's timestamp may be ahead of the ingest clock. Further ahead it is
    #: refused (dead-lettered, ``readings_refused_total{reason="future_timestamp"}``): a
    #: point in a future shard could fix a field's type there before any honest gateway
    #: writes (docs/ingest.md, "What ingest refuses").
    max_clock_skew: Annotated[float, Field(gt=0, le=7 * 24 * 3600)] = 300.0
    #: Distinct series (measurement, device, tag set) one gateway may create, counted by each
    #: worker since it started. Past it a reading that would add a series is refused
    #: (``readings_refused_total{reason="series_budget"}``); series seen before keep flowing.
    #: InfluxDB 1.x refuses every write that would create a series past its
    #: ``max-series-per-database`` (1,000,000 by default), so without this one gateway inventing
    #: device ids or tag values could lock out every honest gateway's new devices. 0: no budget.
    max_series_per_gateway: Annotated[int, Field(ge=0, le=10_000_000)] = 20_000


class DeadLetterBudgetConfig(_Model):
    """How many full dead-letter records one gateway may make (``deadletters.per_gateway``):
    a token bucket per gateway, keyed by the topic's gateway (topics that name none share one
    key). Past it a refusal is still counted, but its record (the up-to-64-KiB point, the
    notification, the cluster's stream record) is left out; once per ``summary_every`` a
    compact ``kind=suppressed`` point says how many, of which kinds, first and last seen.
    ``rate: 0`` with ``burst: 0`` (or ``per_gateway: null`` / ``0``) turns the budget off."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    #: Records a gateway may make at once, before the rate applies.
    burst: Annotated[int, Field(ge=0, le=1_000_000)] = 1000
    #: Records per second a gateway's budget refills with.
    rate: Annotated[float, Field(ge=0, le=1_000_000)] = 1.0
    #: Gateways whose bucket is kept (least recently refused dropped first): what a stream
    #: of invented gateway ids can cost in memory (~200 bytes each).
    max_gateways: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000
    #: Seconds from a gateway's first suppressed record to its summary point.
    summary_every: Annotated[float, Field(ge=1, le=3600)] = 60.0

    @model_validator(mode="after")
    def _both_or_neither(self) -> DeadLetterBudgetConfig:
        if (self.rate == 0) != (self.burst == 0):
            raise ValueError(
                f"rate ({self.rate}) and burst ({self.burst}) must both be positive, or both "
                "0 to turn the budget off (or per_gateway: null)"
            )
        return self

    @property
    def enabled(self) -> bool:
        return self.burst > 0


class DeadLetterConfig(_Model):
    """What ingest does with records of what it refuses (``deadletters``)."""

    #: The per-gateway budget; ``null`` (or ``0``): every refusal makes a full record.
    per_gateway: DeadLetterBudgetConfig | None = DeadLetterBudgetConfig()

    @field_validator("per_gateway", mode="before")
    @classmethod
    def _zero_is_off(cls, value: object) -> object:
        if value == 0 and not isinstance(value, bool):
            return None
        return value

    @property
    def budget(self) -> DeadLetterBudgetConfig | None:
        """The budget when it is on, else ``None``."""
        b = self.per_gateway
        return b if b is not None and b.enabled else None


class IngestConfig(YamlSettings):
    """Everything a worker needs. Build it with :func:`load_config` or directly."""

    model_config = SettingsConfigDict(
        env_prefix="SMARTCITY_INGEST_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    #: Where messages come from: ``mqtt`` (the shared subscription, single-node profile) or
    #: ``jetstream`` (a durable consumer on a NATS JetStream cluster, docs/cluster.md).
    source: Literal["mqtt", "jetstream"] = "mqtt"
    mqtt: MqttConfig = MqttConfig()
    jetstream: JetStreamConfig = JetStreamConfig()
    influx: InfluxConfig = InfluxConfig()
    batch: BatchConfig = BatchConfig()
    intake: IntakeConfig = IntakeConfig()
    deadletters: DeadLetterConfig = DeadLetterConfig()
    #: Serve Prometheus metrics on this port (``None``: do not serve; 0: any free port).
    metrics_port: Annotated[int, Field(ge=0, le=65535)] | None = None
    #: Address ``/metrics`` binds to: loopback by default (the metrics name gateways and
    #: their seqs); set an interface address (or ``0.0.0.0``) for a remote Prometheus.
    metrics_host: str = Field(default="127.0.0.1", min_length=1)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] | None = None
    #: Allow TLS without verification and plain-text credentials to non-loopback hosts.
    allow_insecure: bool = False

    @property
    def window(self) -> int:
        """Messages the source may have in flight to this worker: ``mqtt.receive_maximum``,
        or ``jetstream.max_ack_pending`` with the jetstream source."""
        if self.source == "jetstream":
            return self.jetstream.max_ack_pending
        return self.mqtt.receive_maximum

    @model_validator(mode="after")
    def _coherent(self) -> IngestConfig:
        key = "jetstream.max_ack_pending" if self.source == "jetstream" else "mqtt.receive_maximum"
        if self.window < self.batch.max_concurrent_writes + 1:
            raise ValueError(
                f"{key} must exceed batch.max_concurrent_writes, or writes "
                "starve waiting for messages the broker may not send"
            )
        if self.source == "jetstream":
            js = self.jetstream
            for url in js.servers:
                check_broker_security(
                    host=urllib.parse.urlsplit(url).hostname or "",
                    tls=js.tls,
                    has_password=js.has_password,
                    allow_insecure=self.allow_insecure,
                    tls_key="jetstream.tls",
                )
            for level in self.mqtt.topic_root.split("/"):
                try:
                    check_cluster_id("mqtt.topic_root level", level)
                except TopicError as exc:
                    raise ValueError(exc.reason) from exc
        if self.batch.max_in_flight_readings < self.batch.max_readings:
            raise ValueError("batch.max_in_flight_readings must be >= batch.max_readings")
        check_broker_security(
            host=self.mqtt.host,
            tls=self.mqtt.tls,
            has_password=self.mqtt.has_password,
            allow_insecure=self.allow_insecure,
            tls_key="mqtt.tls",
        )
        self.influx.check_security(allow_insecure=self.allow_insecure, prefix="influx.")
        return self


def _deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(
    path: Path | str | None = None, overrides: Mapping[str, Any] | None = None
) -> IngestConfig:
    """Validate the YAML file (optional), the environment and ``overrides`` into a config.

    ``overrides`` is nested like the file (``{"mqtt": {"port": 1884}}``). Raises
    :class:`ConfigError` naming the file, the key and the reason.
    """
    file = Path(path) if path is not None else None
    try:
        return build_settings(
            IngestConfig, file, _deep_merge({}, overrides or {}), section="ingest"
        )
    except SettingsError as exc:
        raise ConfigError(str(exc), source=exc.source) from exc
