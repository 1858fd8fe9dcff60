"""Whole simulated gateways publishing straight onto a broker with the wire contract.

One process, one thread, many gateways. Each gateway has its **own MQTT connection** (so its
retained birth and its last will are its own, as on a real gateway), and all connections are
driven by one ``selectors`` loop through paho's external-loop API (``loop_read``,
``loop_write``, ``loop_misc``): no paho network threads, so nothing to hand off::

     fleet thread (run) ─────────────────────────────────────────────────────────────────
       every tick:  City.step ─▶ FaultPlan.apply ─▶ WireEncoder.batches
                      └─▶ per gateway: seq += 1, payload into the spool, Ledger.created
       always:      selector.select ─▶ loop_read (CONNACK, PUBACK) / loop_write
                      PUBACK ─▶ spool.pop(seq), Ledger.acked ─▶ fill the in-flight window
     other threads:  stop(), inject(fault)  ── queue.SimpleQueue / Event ──▶ fleet thread

**Spool semantics** (as ``edge_agent``): a batch is numbered and spooled before it is
published and leaves the spool only on PUBACK. The spool is the session: each connection is
a fresh clean-start client, and on every (re)connect the gateway publishes its birth, then
replays every unacknowledged batch oldest first with its original seq and bytes, then new
ones. A gateway that loses its uplink (fault ``uplink_loss``) keeps producing into its spool;
one that reboots (``reboot``) produces nothing while down, and keeps its spool and seq.
The broker sees the connection drop without DISCONNECT and publishes the will.

A PUBACK is not always a delivery: an MQTT v5 broker answers **0x10 No matching
subscribers** when nobody subscribes to the topic, and drops the message. With
``FleetConfig.retry_unrouted`` a batch acked that way stays in the spool and is published
again after a short hold (capped backoff per gateway), like a refused one. It happens for
real: mosquitto 2.0.11 does not restore the shared subscriptions of offline persistent
sessions when it restarts, so until the first ingest worker has reconnected and subscribed
again, telemetry goes to nobody (found by the chaos run, ``simulators._chaos``;
docs/operations.md). Off by default, so that load runs against a bare broker, where nobody
subscribes, still count what the broker took.
"""

from __future__ import annotations

import contextlib
import json
import math
import queue
import random
import selectors
import socket
import ssl
import threading
import time
import urllib.parse
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import SecretStr, ValidationError

from foundation import (
    BrokerAccess,
    BrokerSetupError,
    BrokerTls,
    check_broker_security,
    configure_client,
)
from simulators._city import City, Layout, build_layout
from simulators._errors import BrokerError, ScenarioError
from simulators._faults import ActiveFault, FaultPlan
from simulators._ledger import Ledger
from simulators._scenario import DEVICE_KINDS, DeviceKind, FaultSpec, Scenario
from simulators._wire import GatewayBatch, WireEncoder, batch_payload
from telemetry import (
    Birth,
    Death,
    DeviceInfo,
    Health,
    Location,
    SpoolHealth,
    TopicError,
    Topics,
    encode_message,
)

__all__ = ["BrokerUrl", "FleetConfig", "FleetStats", "GatewayFleet"]

AGENT: Final = "smartcity-sim 0.1.0"
_MISC_EVERY_S: Final = 1.0
#: MQTT v5 reason code of a PUBACK for a message the broker delivered to nobody.
NO_MATCHING_SUBSCRIBERS: Final = 0x10
_HOLD_MIN_S: Final = 0.2
_HOLD_MAX_S: Final = 5.0


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

    def broker_access(self) -> BrokerAccess:
        """Credentials and TLS as the shared model; :class:`ValueError` when the platform's
        rules refuse them (:func:`foundation._broker.check_broker_security`)."""
        access = BrokerAccess(
            username=self.username,
            password=None if self.password is None else SecretStr(self.password),
            password_file=self.password_file,
            tls=self.tls,
        )
        check_broker_security(
            host=self.host,
            tls=self.tls,
            has_password=access.has_password,
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


@dataclass(slots=True)
class _Spooled:
    seq: int
    payload: bytes
    readings: int
    sent: int = 0


@dataclass(slots=True, eq=False)
class _Gateway:
    index: int
    id: str
    topic: str
    status_topic: str
    health_topic: str
    client: mqtt.Client | None = None
    state: Literal["down", "connecting", "up"] = "down"
    spool: OrderedDict[int, _Spooled] = field(default_factory=OrderedDict)
    unsent: deque[int] = field(default_factory=deque)
    inflight: dict[int, int] = field(default_factory=dict)
    control_mids: set[int] = field(default_factory=set)
    next_seq: int = 0
    retry_at: float = 0.0
    backoff: float = 0.5
    uplink_lost: bool = False
    rebooting: bool = False
    writing: bool = False
    boot_mono: float = 0.0
    #: No publishing before this (monotonic): the broker said nobody subscribes.
    hold_until: float = 0.0
    hold_backoff: float = 0.0


class GatewayFleet:
    """Simulated gateways of a scenario on a broker. ``run()`` blocks; ``stop()`` ends it.

    ``fleet.ledger`` says what was emitted; ``fleet.inject(FaultSpec(...))`` adds a fault
    while running (``at_s`` then counts from the current simulated time).
    """

    def __init__(self, config: FleetConfig | None = None) -> None:
        self.config = config or FleetConfig()
        self.scenario = self.config.resolved_scenario()
        try:
            self.topics = Topics(self.scenario.topic_root)
        except TopicError as exc:
            raise ScenarioError(str(exc), key="topic_root") from exc
        self.layout: Layout = build_layout(self.scenario)
        self.city = City(self.scenario, self.layout)
        self.start_ns = (
            self.config.start_ns if self.config.start_ns is not None else self.scenario.start_ns()
        )
        self.plan = FaultPlan(self.layout, start_ns=self.start_ns, seed=self.scenario.seed)
        for spec in self.scenario.faults:
            self.plan.add(spec)
        self.encoder = WireEncoder(
            self.layout, batch_max_readings=self.scenario.publish.batch_max_readings
        )
        self.ledger = Ledger()
        self.ledger.measurements.update(k.spec.measurement for k in self.layout.kinds.values())
        self.stats = FleetStats()
        self._tick_ns = round(self.scenario.tick_s * 1e9)
        self._every: dict[DeviceKind, int] = {
            kind: round(self.scenario.interval_s(kind) / self.scenario.tick_s)
            for kind in DEVICE_KINDS
        }
        self._gws = [
            _Gateway(
                index=i,
                id=g,
                topic=self.topics.telemetry(g),
                status_topic=self.topics.status(g),
                health_topic=self.topics.health(g),
            )
            for i, g in enumerate(self.layout.gateway_ids)
        ]
        self._stop = threading.Event()
        self._commands: queue.SimpleQueue[FaultSpec] = queue.SimpleQueue()
        self._selector: selectors.BaseSelector | None = None
        self._tls_context: ssl.SSLContext | None = None
        try:
            self._access = self.config.broker_access()
        except ValueError as exc:
            raise BrokerError(f"broker settings: {_reason(exc)}") from exc
        self._password: str | None = None
        self._jitter = random.Random(self.scenario.seed)
        self._tick = 0
        self._dirty: set[_Gateway] = set()
        self._running = False
        self._refused_tcp = False

    # -- public, any thread -----------------------------------------------------------------
    @property
    def gateway_ids(self) -> list[str]:
        return list(self.layout.gateway_ids)

    def stop(self) -> None:
        """Ask ``run()`` to stop: stop producing, drain the spools, say goodbye."""
        self._stop.set()

    def inject(self, spec: FaultSpec) -> None:
        """Add a fault; ``at_s`` counts from the simulated time when the fleet picks it up."""
        self._commands.put(spec)

    @property
    def sim_time_ns(self) -> int:
        return self.start_ns + self._tick * self._tick_ns

    def faults(self) -> list[ActiveFault]:
        return self.plan.faults()

    def spooled_batches(self) -> int:
        return sum(len(g.spool) for g in self._gws)

    # -- stepping (no I/O; used by run(), tests and benchmarks) ------------------------------
    def due_kinds(self, tick: int) -> frozenset[DeviceKind]:
        return frozenset(k for k, every in self._every.items() if tick % every == 0)

    def step(self) -> list[GatewayBatch]:
        """Advance one tick: compute the city, apply faults, group readings per gateway."""
        t = self.start_ns + self._tick * self._tick_ns
        self.city.leak_m3h = self.plan.leak_m3h(t)
        frame = self.plan.apply(self.city.step(t, self.due_kinds(self._tick)))
        _lost, rebooting = self.plan.gateways_down(t)
        batches = self.encoder.batches(frame, silent=rebooting if rebooting.any() else None)
        self._tick += 1
        self.stats.ticks = self._tick
        self.stats.sim_ns = t
        return batches

    def spool_batches(self, batches: list[GatewayBatch]) -> int:
        """Number the batches and put them in their gateways' spools; return readings."""
        total = 0
        for b in batches:
            gw = self._gws[b.gateway]
            seq = gw.next_seq
            gw.next_seq += 1
            payload = batch_payload(gw.id, seq, b.readings)
            n = len(b.readings)
            gw.spool[seq] = _Spooled(seq, payload, n)
            self.ledger.created(gw.id, seq, n, b.min_ts, b.max_ts, payload)
            if gw.state == "up":
                gw.unsent.append(seq)
                self._dirty.add(gw)
            total += n
        self.stats.generated_readings += total
        return total

    # -- births -------------------------------------------------------------------------------
    def _link_meta(self, link: int) -> dict[str, str]:
        """What a loop detector announces about its road link: the API and the dashboard
        draw the link from ``geometry`` and rate congestion against ``freeFlowSpeed``."""
        roads = self.layout.roads
        ends = (int(roads.link_from[link]), int(roads.link_to[link]))
        geometry = [[round(float(roads.node_lat[n]), 6), round(float(roads.node_lon[n]), 6)]
                    for n in ends]  # fmt: skip
        return {
            "geometry": json.dumps(geometry),
            "freeFlowSpeed": f"{float(roads.link_free_speed[link]):g}",
            "lanes": str(int(roads.link_lanes[link])),
        }

    def birth(self, index: int) -> Birth:
        devices: list[DeviceInfo] = []
        for k in self.layout.kinds.values():
            sensors = np.flatnonzero(k.sensor_gateway == index).tolist()
            units = {f.name: f.unit for f in k.spec.fields}
            links = k.attrs.get("link")
            for s in sensors:
                c = float(k.attrs["centrality"][s])
                devices.append(
                    DeviceInfo(
                        id=k.device_ids[s],
                        kind=k.spec.device_kind,
                        measurements={k.spec.measurement: units},
                        location=Location(
                            lat=float(k.sensor_lat[s]),
                            lon=float(k.sensor_lon[s]),
                            area="centre" if c >= 0.6 else ("inner" if c >= 0.3 else "outer"),
                        ),
                        meta=self._link_meta(int(links[s])) if links is not None else {},
                    )
                )
        return Birth(
            gw=self.layout.gateway_ids[index],
            ts=self.sim_time_ns,
            agent=AGENT,
            location=Location(
                lat=float(self.layout.gateway_lat[index]),
                lon=float(self.layout.gateway_lon[index]),
                area=self.layout.gateway_area[index],
            ),
            devices=devices,
        )

    # -- the loop -----------------------------------------------------------------------------
    def run(
        self,
        duration_s: float | None = None,
        *,
        ticks: int | None = None,
        progress: Callable[[FleetStats], None] | None = None,
        progress_every_s: float = 5.0,
    ) -> FleetStats:
        """Connect every gateway, then step and publish until ``stop()``, ``duration_s`` wall
        seconds, ``ticks`` steps or the scenario's ``duration_s`` (simulated), whichever first.

        On the way out: stop producing, drain the spools (``drain_timeout_s``), publish each
        gateway's death (``reason: shutdown``) and disconnect. Not re-entrant. ``progress`` is
        called from this thread every ``progress_every_s`` wall seconds.
        """
        if self._running:
            raise RuntimeError("GatewayFleet.run is already running")
        # Certificates and the password file are read once per run, before any connect.
        try:
            if self._access.tls is not None:
                self._tls_context = self._access.tls.ssl_context()
            self._password = self._access.read_password()
        except BrokerSetupError as exc:
            raise BrokerError(f"broker settings: {exc}") from exc
        self._running = True
        self._selector = selectors.DefaultSelector()
        self.stats.started_at = time.monotonic()
        try:
            self._connect_first()
            for gw in self._gws[1:]:
                self._connect(gw)
                self._pump(0.0)
            self._main_loop(duration_s, ticks, progress, progress_every_s)
            self._drain()
        finally:
            self._shutdown()
            self._selector.close()
            self._selector = None
            self._running = False
        return self.stats

    def _main_loop(
        self,
        duration_s: float | None,
        ticks: int | None,
        progress: Callable[[FleetStats], None] | None,
        progress_every_s: float,
    ) -> None:
        speed = self.scenario.speed
        t0 = time.monotonic()
        wall_end = math.inf if duration_s is None else t0 + duration_s
        sim_limit = (
            math.inf
            if self.scenario.duration_s is None
            else self.start_ns + self.scenario.duration_s * 1e9
        )
        tick_wall = self.scenario.tick_s / speed if speed > 0 else 0.0
        first_tick = self._tick
        next_misc = t0 + _MISC_EVERY_S
        health_every = self.scenario.publish.health_interval_s
        next_health = t0 + health_every if health_every > 0 else math.inf
        next_progress = t0 + progress_every_s if progress is not None else math.inf
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= wall_end:
                break
            if ticks is not None and self._tick - first_tick >= ticks:
                break
            if self.sim_time_ns >= sim_limit:
                break
            self._take_commands()
            due_at = t0 + (self._tick - first_tick) * tick_wall
            if now >= due_at and (speed > 0 or self._backlog() < self.config.max_backlog_batches):
                self.stats.lag_s = now - due_at
                self._apply_gateway_faults(self.sim_time_ns)
                self.spool_batches(self.step())
                self._fill_dirty()
                timeout = 0.0
            else:
                timeout = max(0.0, min(due_at - now, 0.05)) if speed > 0 else 0.01
            self._pump(timeout)
            if now >= next_misc:
                next_misc = now + _MISC_EVERY_S
                self._misc(now)
            if now >= next_health:
                next_health = now + health_every
                self._publish_health(now)
            if progress is not None and now >= next_progress:
                next_progress = now + progress_every_s
                progress(self.stats)

    def _backlog(self) -> int:
        return sum(len(g.unsent) + len(g.inflight) for g in self._gws if g.state == "up")

    def _take_commands(self) -> None:
        while True:
            try:
                spec = self._commands.get_nowait()
            except queue.Empty:
                return
            self.plan.add(spec, origin_ns=self.sim_time_ns)

    def _apply_gateway_faults(self, t_ns: int) -> None:
        lost, rebooting = self.plan.gateways_down(t_ns)
        was = np.array([g.uplink_lost or g.rebooting for g in self._gws], dtype=np.bool_)
        down = lost | rebooting
        for i in np.flatnonzero(down ^ was).tolist():
            gw = self._gws[i]
            was_rebooting = gw.rebooting
            gw.uplink_lost, gw.rebooting = bool(lost[i]), bool(rebooting[i])
            if down[i]:
                self._cut(gw)
            else:
                if was_rebooting:
                    gw.boot_mono = time.monotonic()
                gw.retry_at = 0.0
                gw.backoff = 0.5
                self._connect(gw)

    # -- network ------------------------------------------------------------------------------
    def _new_client(self, gw: _Gateway) -> mqtt.Client:
        cfg = self.config
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{cfg.client_prefix}-{gw.id}",
            protocol=MQTTProtocolVersion.MQTTv5,
            userdata=gw,
        )
        window = self.scenario.publish.inflight_window
        client.max_inflight_messages_set(window + 8)
        client.max_queued_messages_set(0)
        client.will_set(
            gw.status_topic, encode_message(Death(gw=gw.id, reason="lost")), qos=1, retain=True
        )
        configure_client(client, self._access, context=self._tls_context, password=self._password)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_socket_close = self._on_socket_close
        return client

    def _connect(self, gw: _Gateway) -> None:
        if gw.state != "down" or gw.uplink_lost or gw.rebooting or self._selector is None:
            return
        client = self._new_client(gw)
        cfg = self.config
        try:
            client.connect(
                cfg.host, cfg.port, keepalive=self.scenario.publish.keepalive_s, clean_start=True
            )
        except (OSError, ValueError) as exc:
            self.stats.connect_errors += 1
            self.stats.last_error = f"{gw.id}: {exc}"
            self._schedule_retry(gw)
            if isinstance(exc, ConnectionRefusedError) and self.stats.connects == 0:
                self._refused_tcp = True
            return
        sock = client.socket()
        if sock is None:
            self._schedule_retry(gw)
            return
        gw.client = client
        gw.state = "connecting"
        gw.writing = False
        self._selector.register(sock, selectors.EVENT_READ, gw)
        self._flush(gw)

    def _connect_first(self) -> None:
        """Connect one gateway and wait for its CONNACK: fail fast on a wrong broker."""
        gw = self._gws[0]
        self._connect(gw)
        deadline = time.monotonic() + self.config.connect_timeout_s
        while gw.state != "up" and time.monotonic() < deadline:
            if gw.state == "down" and (self.stats.refused or self._refused_tcp):
                break  # nothing listens there, or the broker said no: fail fast
            if gw.state == "down" and time.monotonic() >= gw.retry_at:
                self._connect(gw)
            self._pump(0.05)
        if gw.state != "up":
            url = f"{self.config.host}:{self.config.port}"
            raise BrokerError(self.stats.last_error or "no CONNACK in time", url=url)

    def _schedule_retry(self, gw: _Gateway) -> None:
        gw.state = "down"
        gw.retry_at = time.monotonic() + self._jitter.uniform(0, gw.backoff)
        gw.backoff = min(gw.backoff * 2, 30.0)

    def _cut(self, gw: _Gateway) -> None:
        """Lose the uplink abruptly: no DISCONNECT, so the broker publishes the will."""
        client = gw.client
        if client is None:
            gw.state = "down"
            return
        sock = client.socket()
        if isinstance(sock, socket.socket):  # ssl.SSLSocket is one too
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        client.loop_read()  # sees EOF: paho closes the socket and calls on_disconnect
        if gw.client is client:  # paho did not report it (already closing): finish here
            self._lost(gw, "uplink cut")

    def _lost(self, gw: _Gateway, why: str) -> None:
        if gw.client is not None:
            sock = gw.client.socket()
            if sock is not None and self._selector is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(sock)
        if gw.state == "up":
            self.stats.online -= 1
            self.stats.connection_losses += 1
        gw.client = None
        gw.inflight.clear()
        gw.control_mids.clear()
        gw.unsent.clear()
        self.stats.last_error = f"{gw.id}: {why}"
        self._dirty.discard(gw)
        self._schedule_retry(gw)

    def _on_socket_close(self, _client: mqtt.Client, gw: _Gateway, sock: Any) -> None:
        if self._selector is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)

    def _on_connect(
        self, client: mqtt.Client, gw: _Gateway, _flags: Any, rc: ReasonCode, _props: Any
    ) -> None:
        if rc.is_failure:
            self.stats.refused += 1
            self.stats.last_error = f"{gw.id}: broker refused: {rc}"
            return  # the broker closes the connection; on_disconnect follows
        gw.state = "up"
        self.stats.connects += 1
        self.stats.online += 1
        info = client.publish(gw.status_topic, encode_message(self.birth(gw.index)), 1, True)
        gw.control_mids.add(info.mid)
        # The spool is the session: replay everything unacknowledged, oldest first.
        gw.unsent = deque(gw.spool.keys())
        self._dirty.add(gw)

    def _on_disconnect(
        self, client: mqtt.Client, gw: _Gateway, _flags: Any, rc: ReasonCode, _props: Any
    ) -> None:
        if gw.client is client:
            self._lost(gw, f"connection lost: {rc}")

    def _on_publish(
        self, _client: mqtt.Client, gw: _Gateway, mid: int, rc: ReasonCode, _props: Any
    ) -> None:
        seq = gw.inflight.pop(mid, None)
        if seq is None:
            gw.control_mids.discard(mid)
            return
        unrouted = rc.value == NO_MATCHING_SUBSCRIBERS
        self.stats.no_subscribers += unrouted
        if unrouted and self.config.retry_unrouted:
            # Acked, but delivered to nobody (no ingest subscription): not stored anywhere.
            # Keep it in the spool, in seq order, and hold the gateway for a while.
            gw.unsent = deque(sorted((*gw.unsent, seq)))
            gw.hold_backoff = min(max(gw.hold_backoff * 2, _HOLD_MIN_S), _HOLD_MAX_S)
            gw.hold_until = time.monotonic() + self._jitter.uniform(
                gw.hold_backoff / 2, gw.hold_backoff
            )
        elif rc.is_failure:
            # The broker refused this publish: put it back at the front, it is retried.
            gw.unsent.appendleft(seq)
        else:
            gw.hold_backoff = 0.0
            entry = gw.spool.pop(seq, None)
            if entry is not None:
                self.ledger.acked(gw.id, entry.readings)
        self._dirty.add(gw)

    def _fill(self, gw: _Gateway) -> None:
        client = gw.client
        if client is None or gw.state != "up":
            return
        window = self.scenario.publish.inflight_window
        if gw.hold_until and time.monotonic() < gw.hold_until:
            self._flush(gw)
            return  # _misc picks it up again after the hold
        while gw.unsent and len(gw.inflight) < window:
            seq = gw.unsent.popleft()
            entry = gw.spool.get(seq)
            if entry is None:
                continue
            info = client.publish(gw.topic, entry.payload, qos=1)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                gw.unsent.appendleft(seq)
                break
            gw.inflight[info.mid] = seq
            self.ledger.published(gw.id, replay=entry.sent > 0)
            entry.sent += 1
        self._flush(gw)

    def _fill_dirty(self) -> None:
        while self._dirty:
            self._fill(self._dirty.pop())

    def _flush(self, gw: _Gateway) -> None:
        """Write what paho queued; watch for writability only while something is left."""
        client = gw.client
        if client is None or self._selector is None:
            return
        if client.want_write():
            client.loop_write()
        client = gw.client  # loop_write may have lost the connection
        if client is None:
            return
        want = client.want_write()
        if want != gw.writing:
            sock = client.socket()
            if sock is None:
                return
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if want else 0)
            with contextlib.suppress(KeyError, ValueError):
                self._selector.modify(sock, events, gw)
                gw.writing = want

    def _pump(self, timeout: float) -> None:
        """One round of network I/O for every connection."""
        selector = self._selector
        if selector is None:
            return
        if not selector.get_map():
            time.sleep(timeout)
            return
        for key, events in selector.select(timeout):
            gw: _Gateway = key.data
            client = gw.client
            if client is None:
                continue
            if events & selectors.EVENT_READ:
                client.loop_read()
                if self._tls_context is not None:
                    sock = client.socket()
                    while (
                        gw.client is client and isinstance(sock, ssl.SSLSocket) and sock.pending()
                    ):
                        client.loop_read()
            if gw.client is client and events & selectors.EVENT_WRITE:
                client.loop_write()
            self._dirty.add(gw)
        self._fill_dirty()

    def _misc(self, now: float) -> None:
        for gw in self._gws:
            if gw.client is not None:
                gw.client.loop_misc()
                if gw.hold_until and now >= gw.hold_until:
                    gw.hold_until = 0.0
                    self._fill(gw)
                self._flush(gw)
            elif gw.state == "down" and now >= gw.retry_at:
                self._connect(gw)

    def _publish_health(self, now: float) -> None:
        for gw in self._gws:
            if gw.client is None or gw.state != "up":
                continue
            spool = gw.spool
            health = Health(
                gw=gw.id,
                ts=self.sim_time_ns,
                uptime_s=now - (gw.boot_mono or self.stats.started_at),
                next_seq=gw.next_seq,
                spool=SpoolHealth(
                    batches=len(spool),
                    readings=sum(e.readings for e in spool.values()),
                    bytes=sum(len(e.payload) for e in spool.values()),
                    budget_bytes=0,
                    oldest_age_s=None,
                    dropped_batches=0,
                    dropped_readings=0,
                ),
            )
            gw.client.publish(gw.health_topic, encode_message(health), qos=0)
            self._flush(gw)

    # -- the way out --------------------------------------------------------------------------
    def _drain(self) -> None:
        deadline = time.monotonic() + self.config.drain_timeout_s
        while time.monotonic() < deadline:
            pending = [g for g in self._gws if g.spool and not (g.uplink_lost or g.rebooting)]
            if not pending:
                return
            now = time.monotonic()
            for gw in pending:
                if gw.state == "down" and now >= gw.retry_at:
                    self._connect(gw)
                elif gw.hold_until and now >= gw.hold_until:
                    gw.hold_until = 0.0
                    self._fill(gw)
            self._pump(0.05)

    def _shutdown(self) -> None:
        """Publish each connected gateway's death (shutdown), wait for PUBACKs, disconnect."""
        deadline = time.monotonic() + 5.0
        for gw in self._gws:
            if gw.client is not None and gw.state == "up":
                death = Death(gw=gw.id, ts=self.sim_time_ns, reason="shutdown")
                info = gw.client.publish(gw.status_topic, encode_message(death), 1, True)
                gw.control_mids.add(info.mid)
                self._flush(gw)
        while time.monotonic() < deadline and any(
            g.control_mids for g in self._gws if g.client is not None
        ):
            self._pump(0.05)
        for gw in self._gws:
            client = gw.client
            if client is None:
                continue
            gw.client = None
            if gw.state == "up":
                self.stats.online -= 1
            gw.state = "down"
            client.disconnect()
            with contextlib.suppress(OSError):
                client.loop_write()
            sock = client.socket()
            if sock is not None and self._selector is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(sock)
            with contextlib.suppress(OSError):
                if sock is not None:
                    sock.close()


def _reason(exc: ValueError) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
    return str(exc)
