"""Where and how a fleet runs (:class:`FleetConfig`, :class:`BrokerUrl`) and what it
counted (:class:`FleetStats`)."""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import SecretStr, ValidationError

from foundation import BrokerAccess, BrokerTls, check_broker_security
from simulators._errors import BrokerError, ScenarioError
from simulators._scenario import Scenario
from telemetry import TopicError, check_cluster_id

__all__ = ["BrokerUrl", "FleetConfig", "FleetStats", "settings_reason"]


@dataclass(frozen=True, slots=True)
class BrokerUrl:
    """``mqtt://host:port`` or ``mqtts://host:port`` (TLS)."""

    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> BrokerUrl:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not parts.hostname:
            raise BrokerError("broker URL must look like mqtt://host:1883 or mqtts://host:8883")
        tls = parts.scheme in ("mqtts", "ssl")
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError as exc:
            raise BrokerError(f"bad port in {url!r}") from exc
        return cls(parts.hostname, port, tls)


@dataclass(frozen=True, kw_only=True)
class FleetConfig:
    """Where and how a fleet runs.

    Without ``scenario`` the fleet is ``gateways`` identical gateways holding
    ``devices_per_gateway`` devices of mixed kinds reporting every ``interval_s``
    (:meth:`Scenario.mixed`); with one, the scenario sizes the city and those three are
    ignored. ``speed`` and ``start_ns`` override the scenario's; ``topic_root`` too when set.
    """

    gateways: int = 200
    devices_per_gateway: int = 5
    interval_s: float = 1.0
    seed: int = 1
    topic_root: str | None = None
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    #: A file holding the password (first line), read when the fleet starts.
    password_file: Path | None = None
    #: TLS to the broker (:class:`foundation._broker.BrokerTls`): CA, client certificate.
    tls: BrokerTls | None = None
    #: Development only: permits ``tls.insecure`` and a password over plain TCP to a broker
    #: that is not on loopback.
    allow_insecure: bool = False
    #: ``mqtt5`` (mosquitto, the default) or ``mqtt311``: the cluster profile, a NATS
    #: JetStream cluster, speaks only MQTT 3.1.1 (docs/cluster.md). There a PUBACK carries no
    #: reason code (so ``retry_unrouted`` never fires: start ingest, which creates the
    #: durable consumer, before the fleet), commands carry their reply address in the body,
    #: and every gateway id, client id and topic-root level must be a NATS-safe id (no ``.``;
    #: checked when the fleet is built).
    protocol: Literal["mqtt5", "mqtt311"] = "mqtt5"
    #: More broker addresses ``(host, port)`` after ``host``/``port`` (the nodes of a
    #: cluster): each gateway's session fails over between them in order
    #: (:class:`foundation.mqtt.SessionConfig` ``hosts``).
    hosts: tuple[tuple[str, int], ...] = ()
    #: With ``hosts``: gateway ``i`` starts at address ``i mod n`` and fails over from there
    #: in order, so that a fleet spreads over the nodes (as DNS round robin would); off:
    #: every gateway starts at ``host``.
    spread_hosts: bool = True
    #: Per-gateway credentials: ``(username, password)`` by gateway id (a NATS cluster gives
    #: every gateway its own user, allowed only under its own topics). Overrides
    #: ``username``/``password``/``password_file``; TLS still comes from ``tls``.
    credentials: Callable[[str], tuple[str, str]] | None = None
    centre: tuple[float, float] = (59.9139, 10.7522)
    scenario: Scenario | None = None
    speed: float | None = None
    start_ns: int | None = None
    #: MQTT client ids are ``{client_prefix}-{gateway id}``.
    client_prefix: str = "sim"
    #: On stop, how long to keep publishing the spools before giving up (wall seconds).
    drain_timeout_s: float = 15.0
    #: Speed 0 (as fast as possible): make the next step only while fewer batches than this
    #: wait to be acknowledged across connected gateways.
    max_backlog_batches: int = 4000
    connect_timeout_s: float = 10.0
    #: A PUBACK with 0x10 No matching subscribers means the broker dropped the batch: keep it
    #: spooled and send it again (runs against a platform, where ingest subscribes). Off:
    #: count it as delivered (load runs against a bare broker, where nobody subscribes).
    retry_unrouted: bool = False
    #: Acknowledged batches are kept this long (wall seconds), so that the platform's gap
    #: repair can ask for them again with ``resend`` (a real gateway's
    #: ``spool.keep_delivered_s``). 0: forgotten on their PUBACK.
    keep_delivered_s: float = 3600.0
    #: Bytes the kept batches may take, all gateways together (payload plus about 200 bytes
    #: each); past it the oldest deliveries are forgotten first.
    keep_delivered_bytes: int = 256 * 1024**2
    #: Subscribe to each gateway's ``cmd`` topic and answer commands (ping, reannounce,
    #: health, resend) as the edge agent does.
    commands: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.keep_delivered_s <= 7 * 86_400:
            raise ScenarioError(
                "must be within 0..604800 seconds", source="FleetConfig", key="keep_delivered_s"
            )
        if self.keep_delivered_bytes < 0:
            raise ScenarioError("must be >= 0", source="FleetConfig", key="keep_delivered_bytes")
        if self.protocol not in ("mqtt5", "mqtt311"):
            raise ScenarioError(
                f"must be 'mqtt5' or 'mqtt311', not {self.protocol!r}",
                source="FleetConfig", key="protocol",
            )  # fmt: skip
        if (self.host, self.port) in self.hosts or len(set(self.hosts)) != len(self.hosts):
            raise ScenarioError("lists an address twice", source="FleetConfig", key="hosts")

    @property
    def addresses(self) -> tuple[tuple[str, int], ...]:
        """Every broker address in failover order: ``(host, port)`` then ``hosts``."""
        return ((self.host, self.port), *self.hosts)

    def check_cluster_ids(self, topic_root: str, gateway_ids: Iterable[str]) -> None:
        """With ``mqtt311`` (the cluster profile): every topic-root level, gateway id and
        client id must map to itself as one NATS subject token
        (:func:`telemetry.check_cluster_id`); :class:`ScenarioError` names the first that
        does not. Nothing to check with ``mqtt5``."""
        if self.protocol != "mqtt311":
            return
        try:
            for level in topic_root.split("/"):
                check_cluster_id("topic root level", level)
            for gw in gateway_ids:
                check_cluster_id("gateway id", gw)
                check_cluster_id("client id", f"{self.client_prefix}-{gw}")
        except TopicError as exc:
            raise ScenarioError(exc.reason, source="FleetConfig", key="protocol") from exc

    def broker_access(self) -> BrokerAccess:
        """Credentials and TLS as the shared model; :class:`ValueError` when the platform's
        rules refuse them (:func:`foundation._broker.check_broker_security`)."""
        access = BrokerAccess(
            username=self.username,
            password=None if self.password is None else SecretStr(self.password),
            password_file=self.password_file,
            tls=self.tls,
        )
        for host, _port in self.addresses:
            check_broker_security(
                host=host,
                tls=self.tls,
                has_password=access.has_password or self.credentials is not None,
                allow_insecure=self.allow_insecure,
            )
        return access

    def resolved_scenario(self) -> Scenario:
        scenario = self.scenario or Scenario.mixed(
            gateways=self.gateways,
            devices_per_gateway=self.devices_per_gateway,
            interval_s=self.interval_s,
            seed=self.seed,
            centre=self.centre,
        )
        changes: dict[str, Any] = {}
        if self.speed is not None:
            changes["speed"] = self.speed
        if self.topic_root is not None:
            changes["topic_root"] = self.topic_root
        return scenario.with_overrides(**changes) if changes else scenario


@dataclass(slots=True)
class FleetStats:
    """Counters of a run (read from any thread; written by the fleet thread)."""

    ticks: int = 0
    sim_ns: int = 0
    #: How far the wall clock ran ahead of the simulated schedule at the last step (s).
    lag_s: float = 0.0
    connects: int = 0
    connection_losses: int = 0
    refused: int = 0
    connect_errors: int = 0
    last_error: str = ""
    online: int = 0
    started_at: float = 0.0
    generated_readings: int = 0
    #: Batches the broker acked with 0x10 No matching subscribers (with ``retry_unrouted``:
    #: kept and sent again).
    no_subscribers: int = 0
    #: Batches the broker refused (PUBACK >= 0x80): kept in the spool, replayed on the
    #: next connection (:class:`foundation.SendPolicy`).
    publish_refused: int = 0
    #: Acknowledged batches held for ``resend`` now, and those forgotten early (budget).
    kept_batches: int = 0
    kept_bytes: int = 0
    kept_evicted: int = 0
    #: Commands answered, by outcome; ``resend`` seqs found (published again or on their
    #: way) and missing (not held).
    commands: int = 0
    commands_refused: int = 0
    commands_unanswered: int = 0
    resend_requests: int = 0
    resend_requeued: int = 0
    resend_waiting: int = 0
    resend_missing: int = 0
    #: Gateways whose ``cmd`` subscription the broker refused.
    command_subscribe_refused: int = 0


def settings_reason(exc: ValueError) -> str:
    """A refusal of the broker settings in one line (pydantic's prefix dropped)."""
    if isinstance(exc, ValidationError):
        return "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
    return str(exc)
