"""Whole simulated gateways publishing straight onto a broker with the wire contract.

One process, one event loop, many gateways. Each gateway has its **own MQTT session**
(:class:`foundation.mqtt.MqttSession`, so its retained birth and its last will are its own,
as on a real gateway); the session layer drives paho inside the loop, so there are no paho
network threads and nothing to hand off::

     event loop (run() -> asyncio.run) ─────────────────────────────────────────────────
       main task:  every tick: City.step ─▶ FaultPlan.apply ─▶ WireEncoder.batches
                     └─▶ per gateway: seq += 1, payload into the spool, Ledger.created
                   fill windows: spool ─▶ session.publish_nowait (future per batch)
       task fleet[<gw>].uplink (one per gateway, in one TaskGroup):
                   enter the session (birth on every connect) ─▶ hold it until a fault cuts
                   it (abort: no DISCONNECT, the broker publishes the will) or the fleet
                   stops (death "shutdown", DISCONNECT); the session reconnects by itself
       task fleet[<gw>].commands (one per connected gateway): subscribe to <gw>/cmd, answer
                   ping, reannounce, health and resend on the request's response topic
       PUBACK future ─▶ spool.pop(seq), Ledger.acked ─▶ kept (delivered) ─▶ fill the window
     other threads:  stop(), pause(), inject(fault)  ── SimpleQueue / Event ──▶ main task

**Spool semantics** (as ``edge_agent``): a batch is numbered and spooled before it is
published and leaves the spool only on PUBACK. The spool is the session: each connection is
a fresh clean-start client, and on every (re)connect the gateway publishes its birth, then
replays every unacknowledged batch oldest first with its original seq and bytes, then new
ones. A gateway that loses its uplink (fault ``uplink_loss``) keeps producing into its spool;
one that reboots (``reboot``) produces nothing while down, and keeps its spool and seq.
The broker sees the connection drop without DISCONNECT and publishes the will.

**Delivered batches are kept** (as ``spool.keep_delivered_s`` on a real gateway) for
``FleetConfig.keep_delivered_s`` (1 h) within ``keep_delivered_bytes`` for the whole fleet
(oldest delivery forgotten first), so that the platform's gap repair can ask for them again::

    spool (unacked) ──PUBACK──▶ kept (seq → the same bytes) ──older than keep_delivered_s,
         ▲                         │                          or over the byte budget──▶ gone
         └──── resend(seqs) ◀──────┘  published again first, same seq, same payload

The ``resend`` command (``docs/wire-protocol.md``) is parsed and answered with the contract's
:func:`telemetry.parse_resend_args` / :func:`telemetry.resend_result`, like the edge agent:
``found`` = ``requeued`` (kept batches published again) + ``waiting`` (still unacknowledged),
``missing`` the seqs not held. A replay is the original bytes, so storing it again is an
overwrite. The ledger counts a batch acknowledged once, however often it is sent again.

**Hostile gateways** (fault ``hostile``, :mod:`simulators._hostile`) produce no honest
readings while the fault lasts and publish one hostile message per step instead, counted in
``fleet.hostile`` and never in the ledger.

A PUBACK is not always a delivery: an MQTT v5 broker answers **0x10 No matching
subscribers** when nobody subscribes to the topic, and drops the message. With
``FleetConfig.retry_unrouted`` a batch acked that way stays in the spool and is published
again after a short hold (capped backoff per gateway), like a refused one. It happens for
real: mosquitto 2.0.11 does not restore the shared subscriptions of offline persistent
sessions when it restarts, so until the first ingest worker has reconnected and subscribed
again, telemetry goes to nobody (found by the chaos run, ``smartcity._chaos``;
docs/operations.md). Off by default, so that load runs against a bare broker, where nobody
subscribes, still count what the broker took.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import queue
import random
import threading
import time
import urllib.parse
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import msgspec
import numpy as np
from pydantic import SecretStr, ValidationError

from foundation import (
    Backoff,
    BrokerAccess,
    BrokerSetupError,
    BrokerTls,
    check_broker_security,
)
from foundation.mqtt import (
    NO_MATCHING_SUBSCRIBERS,
    Message,
    MqttConnectError,
    MqttDisconnected,
    MqttError,
    MqttSession,
    MqttSubscribeError,
    Outgoing,
    SessionConfig,
    SessionStatus,
    publish_properties,
)
from simulators._city import City, Layout, build_layout
from simulators._errors import BrokerError, ScenarioError
from simulators._faults import ActiveFault, FaultPlan
from simulators._hostile import HOSTILE_CASES, HostileCase, HostileTally, hostile_messages
from simulators._ledger import Ledger
from simulators._scenario import DEVICE_KINDS, DeviceKind, FaultSpec, Scenario
from simulators._wire import GatewayBatch, WireEncoder, batch_payload
from telemetry import (
    Birth,
    CommandRequest,
    CommandResponse,
    Death,
    DeviceInfo,
    Health,
    InvalidCommand,
    Location,
    PayloadError,
    SpoolHealth,
    TopicError,
    Topics,
    decode_message,
    encode_message,
    parse_resend_args,
    resend_result,
)

__all__ = ["BrokerUrl", "FleetConfig", "FleetStats", "GatewayFleet"]

AGENT: Final = "smartcity-sim 0.1.0"
_MISC_EVERY_S: Final = 1.0
#: Sessions entering (TCP + TLS + CONNECT in the executor) at the same time.
_CONNECTS_AT_ONCE: Final = 64
#: The reconnect schedule of a gateway: full jitter, 0.5 s doubling up to 30 s.
_RECONNECT: Final = Backoff(initial=0.5, maximum=30.0, multiplier=2.0, jitter=1.0)
_SHUTDOWN_S: Final = 5.0
_HOLD_MIN_S: Final = 0.2
_HOLD_MAX_S: Final = 5.0
#: What a kept batch costs besides its payload (the entry, its index, the order queue).
_KEPT_OVERHEAD: Final = 200
#: Resend requests remembered by :meth:`GatewayFleet.resend_log`.
_RESEND_LOG: Final = 10_000
log: Final = logging.getLogger("simulators")


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


@dataclass(slots=True)
class _Spooled:
    seq: int
    payload: bytes
    readings: int
    sent: int = 0
    #: Counted in the ledger as acknowledged (a resend is not counted again).
    acked: bool = False
    #: When it was last acknowledged (monotonic): its place in the kept order.
    kept_at: float = 0.0


@dataclass(slots=True, eq=False)
class _Gateway:
    index: int
    id: str
    topic: str
    status_topic: str
    health_topic: str
    cmd_topic: str
    session: MqttSession | None = None
    state: Literal["down", "connecting", "up"] = "down"
    #: The session epoch of the connection the in-flight batches went out on.
    epoch: int = 0
    spool: OrderedDict[int, _Spooled] = field(default_factory=OrderedDict)
    #: Acknowledged batches held for ``resend`` (seq -> the same entry).
    kept: dict[int, _Spooled] = field(default_factory=dict)
    unsent: deque[int] = field(default_factory=deque)
    inflight: set[int] = field(default_factory=set)
    next_seq: int = 0
    uplink_lost: bool = False
    rebooting: bool = False
    #: Under a ``hostile`` fault: the cases it sends in turn instead of honest readings.
    hostile_cases: tuple[HostileCase, ...] = ()
    hostile_turn: int = 0
    boot_mono: float = 0.0
    #: No publishing before this (monotonic): the broker said nobody subscribes.
    hold_until: float = 0.0
    hold_backoff: float = 0.0
    #: Connect failures and refusals of the session already counted in FleetStats.
    failures_seen: int = 0
    #: Set to make the gateway's task look at its state (fault, stop).
    wake: asyncio.Event | None = None


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
                cmd_topic=self.topics.command(g),
            )
            for i, g in enumerate(self.layout.gateway_ids)
        ]
        self._stop = threading.Event()
        self._paused = threading.Event()
        #: Kept batches in the order they were acknowledged: (kept_at, gateway, seq, entry);
        #: an item whose entry was sent again since is stale and skipped.
        self._kept_order: deque[tuple[float, _Gateway, int, _Spooled]] = deque()
        #: What hostile gateways sent (never in the ledger).
        self.hostile = HostileTally()
        #: The last resend requests that found kept batches: (monotonic time, gateway, seqs
        #: published again), for measurements such as the chaos run's ``repair_s``.
        self._resend_log: deque[tuple[float, str, tuple[int, ...]]] = deque(
            maxlen=_RESEND_LOG
        )
        self._commands: queue.SimpleQueue[FaultSpec] = queue.SimpleQueue()
        self._run_access: BrokerAccess | None = None
        self._ssl: Any = None
        try:
            self._access = self.config.broker_access()
        except ValueError as exc:
            raise BrokerError(f"broker settings: {_reason(exc)}") from exc
        self._jitter = random.Random(self.scenario.seed)
        self._tick = 0
        self._dirty: set[_Gateway] = set()
        self._running = False
        self._closing = False
        self._shutdown_at = math.inf
        self._main_wake: asyncio.Event | None = None

    # -- public, any thread -----------------------------------------------------------------
    @property
    def gateway_ids(self) -> list[str]:
        return list(self.layout.gateway_ids)

    def stop(self) -> None:
        """Ask ``run()`` to stop: stop producing, drain the spools, say goodbye."""
        self._stop.set()

    def pause(self) -> None:
        """Stop producing (the simulated clock stands still) but stay connected: spools
        drain, commands (``resend``) are answered. :meth:`resume` goes on."""
        self._paused.set()

    def resume(self) -> None:
        self._paused.clear()

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

    def kept_batches(self) -> int:
        """Acknowledged batches held for ``resend``."""
        return sum(len(g.kept) for g in self._gws)

    def resend_log(self) -> list[tuple[float, str, tuple[int, ...]]]:
        """The last resend requests that found kept batches: (``time.monotonic()``,
        gateway, the seqs published again), oldest first."""
        return list(self._resend_log)

    @property
    def hostile_gateway_ids(self) -> list[str]:
        """Gateways a ``hostile`` fault has hit so far (their messages are in
        :attr:`hostile`, not in the ledger)."""
        return sorted(self.hostile.gateways)

    # -- stepping (no I/O; used by run(), tests and benchmarks) ------------------------------
    def due_kinds(self, tick: int) -> frozenset[DeviceKind]:
        return frozenset(k for k, every in self._every.items() if tick % every == 0)

    def step(self) -> list[GatewayBatch]:
        """Advance one tick: compute the city, apply faults, group readings per gateway."""
        t = self.start_ns + self._tick * self._tick_ns
        self.city.leak_m3h = self.plan.leak_m3h(t)
        frame = self.plan.apply(self.city.step(t, self.due_kinds(self._tick)))
        _lost, rebooting = self.plan.gateways_down(t)
        silent = rebooting | self.plan.hostile(t)
        batches = self.encoder.batches(frame, silent=silent if silent.any() else None)
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
        gateway's death (``reason: shutdown``) and disconnect. Not re-entrant. Runs its own
        event loop (``asyncio.run``) in the calling thread; ``progress`` is called from it
        every ``progress_every_s`` wall seconds.
        """
        if self._running:
            raise RuntimeError("GatewayFleet.run is already running")
        # Certificates and the password file are read once per run, before any connect.
        try:
            self._ssl = None if self._access.tls is None else self._access.tls.ssl_context()
            password = self._access.read_password()
        except BrokerSetupError as exc:
            raise BrokerError(f"broker settings: {exc}") from exc
        self._run_access = self._access.model_copy(
            update={
                "password": None if password is None else SecretStr(password),
                "password_file": None,
            }
        )
        self._running = True
        self._closing = False
        self._shutdown_at = math.inf
        self.stats.started_at = time.monotonic()
        try:
            asyncio.run(self._run(duration_s, ticks, progress, progress_every_s))
        finally:
            self._running = False
            self._main_wake = None
            for gw in self._gws:
                gw.wake = None
        return self.stats

    async def _run(
        self,
        duration_s: float | None,
        ticks: int | None,
        progress: Callable[[FleetStats], None] | None,
        progress_every_s: float,
    ) -> None:
        loop = asyncio.get_running_loop()
        self._main_wake = asyncio.Event()
        self._connect_slots = asyncio.Semaphore(_CONNECTS_AT_ONCE)
        for gw in self._gws:
            gw.wake = asyncio.Event()
        error: BrokerError | None = None
        async with asyncio.TaskGroup() as tg:
            try:
                # One gateway first, waiting for its CONNACK: fail fast on a wrong broker.
                first: asyncio.Future[None] = loop.create_future()
                gw0 = self._gws[0]
                tg.create_task(self._uplink(gw0, first), name=f"fleet[{gw0.id}].uplink")
                try:
                    async with asyncio.timeout(self.config.connect_timeout_s + 1.0):
                        await first
                except (MqttConnectError, TimeoutError) as exc:
                    url = f"{self.config.host}:{self.config.port}"
                    error = BrokerError(str(exc) or "no CONNACK in time", url=url)
                if error is None:
                    for gw in self._gws[1:]:
                        tg.create_task(self._uplink(gw, None), name=f"fleet[{gw.id}].uplink")
                    await self._main_loop(duration_s, ticks, progress, progress_every_s)
                    await self._drain()
            finally:
                self._begin_shutdown()
        if error is not None:
            raise error

    async def _main_loop(
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
        paused_at: float | None = None
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= wall_end:
                break
            if self._paused.is_set():
                paused_at = now if paused_at is None else paused_at
            elif paused_at is not None:
                t0 += now - paused_at  # the schedule resumes where it stood
                paused_at = None
            if ticks is not None and self._tick - first_tick >= ticks:
                break
            if self.sim_time_ns >= sim_limit:
                break
            self._take_commands()
            due_at = t0 + (self._tick - first_tick) * tick_wall
            if paused_at is not None:
                timeout = 0.05
            elif now >= due_at and (speed > 0 or self._backlog() < self.config.max_backlog_batches):
                self.stats.lag_s = now - due_at
                t_sim = self.sim_time_ns
                self._apply_gateway_faults(t_sim)
                self.spool_batches(self.step())
                self._publish_hostile(t_sim)
                self._fill_dirty()
                timeout = 0.0
            else:
                timeout = max(0.0, min(due_at - now, 0.05)) if speed > 0 else 0.01
            await self._io(timeout)
            if now >= next_misc:
                next_misc = now + _MISC_EVERY_S
                self._release_holds(now)
                self._forget_kept(now)
            if now >= next_health:
                next_health = now + health_every
                self._publish_health(now)
            if progress is not None and now >= next_progress:
                next_progress = now + progress_every_s
                progress(self.stats)

    async def _io(self, at_most_s: float) -> None:
        """Let the loop run network I/O for up to ``at_most_s`` (less when a gateway came up
        or has new batches to send)."""
        wake = self._main_wake
        assert wake is not None
        if at_most_s <= 0 or wake.is_set():
            await asyncio.sleep(0)
        else:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(at_most_s):
                    await wake.wait()
        wake.clear()
        self._fill_dirty()

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
            elif was_rebooting:
                gw.boot_mono = time.monotonic()
            self._wake(gw)
        cases: dict[int, tuple[HostileCase, ...]] = {}
        for gateways, spec in self.plan.hostile_faults(t_ns):
            for i in gateways.tolist():
                cases[i] = tuple(spec.hostile_cases) or HOSTILE_CASES
        for gw in self._gws:
            gw.hostile_cases = cases.get(gw.index, ())

    # -- network ------------------------------------------------------------------------------
    def _session_config(self, gw: _Gateway) -> SessionConfig:
        cfg = self.config
        access = self._run_access
        assert access is not None
        window = self.scenario.publish.inflight_window
        index = gw.index
        return SessionConfig(
            host=cfg.host,
            port=cfg.port,
            client_id=f"{cfg.client_prefix}-{gw.id}",
            access=access,
            ssl_context=self._ssl,
            keepalive_s=self.scenario.publish.keepalive_s,
            connect_timeout_s=cfg.connect_timeout_s,
            clean_start=True,
            # The batches' window plus room for the birth, the death and health reports.
            max_inflight=window + 8,
            will=Outgoing(
                topic=gw.status_topic,
                payload=encode_message(Death(gw=gw.id, reason="lost")),
                retain=True,
            ),
            birth=lambda: Outgoing(
                topic=gw.status_topic, payload=encode_message(self.birth(index)), retain=True
            ),
            backoff=_RECONNECT,
            name=f"fleet[{gw.id}].mqtt",
        )

    async def _uplink(self, gw: _Gateway, first: asyncio.Future[None] | None) -> None:
        """One gateway's connection: up while neither cut by a fault nor stopped."""
        attempt = 0
        while not self._closing:
            if gw.uplink_lost or gw.rebooting:
                attempt = 0
                await self._wait(gw)
                continue
            session = MqttSession(
                self._session_config(gw),
                on_connect=functools.partial(self._on_up, gw),
                on_disconnect=functools.partial(self._on_down, gw),
            )
            gw.state = "connecting"
            gw.session = session  # _on_up (inside __aenter__) fills the window already
            try:
                async with contextlib.AsyncExitStack() as stack:
                    async with self._connect_slots:
                        await stack.enter_async_context(session)
                    attempt = 0
                    if first is not None:
                        first.set_result(None)
                        first = None
                    await self._serve(gw, session)
            except MqttConnectError as exc:
                self.stats.connect_errors += 1
                self.stats.refused += exc.reason_code is not None
                self.stats.last_error = f"{gw.id}: {exc}"
                if first is not None:
                    first.set_exception(exc)
                    return
                gw.state = "down"
                delay = _RECONNECT.delay(attempt, self._jitter)
                attempt += 1
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wait(gw)
            finally:
                gw.session = None
                gw.state = "down"

    async def _serve(self, gw: _Gateway, session: MqttSession) -> None:
        """Hold the session; answer commands beside it while it lasts."""
        async with asyncio.TaskGroup() as tg:
            reader = None
            if self.config.commands:
                reader = tg.create_task(
                    self._command_loop(gw, session), name=f"fleet[{gw.id}].commands"
                )
            try:
                await self._hold(gw, session)
            finally:
                if reader is not None:
                    reader.cancel()  # the session's message stream ends only at its exit

    async def _hold(self, gw: _Gateway, session: MqttSession) -> None:
        """Keep the session until a fault cuts it or the fleet stops."""
        while True:
            if gw.uplink_lost or gw.rebooting:
                session.abort()  # no DISCONNECT: the broker publishes the will
                return
            if self._closing:
                await self._goodbye(gw, session)
                return
            await self._wait(gw)

    async def _goodbye(self, gw: _Gateway, session: MqttSession) -> None:
        """Publish the death (``shutdown``) and wait for its PUBACK; DISCONNECT follows."""
        if not session.connected:
            return
        death = Death(gw=gw.id, ts=self.sim_time_ns, reason="shutdown")
        with contextlib.suppress(MqttError, TimeoutError):
            async with asyncio.timeout(max(0.0, self._shutdown_at - time.monotonic())):
                await session.publish(gw.status_topic, encode_message(death), retain=True)

    @staticmethod
    async def _wait(gw: _Gateway) -> None:
        wake = gw.wake
        assert wake is not None
        await wake.wait()
        wake.clear()

    @staticmethod
    def _wake(gw: _Gateway) -> None:
        if gw.wake is not None:
            gw.wake.set()

    def _cut(self, gw: _Gateway) -> None:
        """Lose the uplink abruptly: no DISCONNECT, so the broker publishes the will."""
        if gw.session is not None:
            gw.session.abort()

    def _count_failures(self, gw: _Gateway, status: SessionStatus) -> None:
        """Failed reconnects inside the session since we last looked."""
        new = status.connect_failures - gw.failures_seen
        if new > 0:
            gw.failures_seen = status.connect_failures
            self.stats.connect_errors += new
            err = status.last_error
            if isinstance(err, MqttConnectError) and err.reason_code is not None:
                self.stats.refused += 1

    def _on_up(self, gw: _Gateway, status: SessionStatus) -> None:
        """Connected (the session published the birth): replay the spool, oldest first."""
        self._count_failures(gw, status)
        gw.state = "up"
        gw.epoch = status.epoch
        self.stats.connects += 1
        self.stats.online += 1
        gw.inflight.clear()
        gw.unsent = deque(gw.spool.keys())
        self._dirty.add(gw)
        if self._main_wake is not None:
            self._main_wake.set()

    def _on_down(self, gw: _Gateway, status: SessionStatus) -> None:
        self._count_failures(gw, status)
        if gw.state == "up":
            self.stats.online -= 1
            if not self._closing:
                self.stats.connection_losses += 1
        gw.state = "connecting"
        gw.inflight.clear()
        gw.unsent.clear()
        self._dirty.discard(gw)
        if status.last_error is not None:
            self.stats.last_error = f"{gw.id}: {status.last_error}"

    def _on_puback(self, gw: _Gateway, seq: int, epoch: int, fut: asyncio.Future[int]) -> None:
        if epoch != gw.epoch or fut.cancelled() or fut.exception() is not None:
            return  # that connection is gone: the spool replays the batch on the next one
        gw.inflight.discard(seq)
        rc = fut.result()
        unrouted = rc == NO_MATCHING_SUBSCRIBERS
        self.stats.no_subscribers += unrouted
        if unrouted and self.config.retry_unrouted:
            # Acked, but delivered to nobody (no ingest subscription): not stored anywhere.
            # Keep it in the spool, in seq order, and hold the gateway for a while.
            gw.unsent = deque(sorted((*gw.unsent, seq)))
            gw.hold_backoff = min(max(gw.hold_backoff * 2, _HOLD_MIN_S), _HOLD_MAX_S)
            gw.hold_until = time.monotonic() + self._jitter.uniform(
                gw.hold_backoff / 2, gw.hold_backoff
            )
        elif rc >= 0x80:
            # The broker refused this publish: put it back at the front, it is retried.
            gw.unsent.appendleft(seq)
        else:
            gw.hold_backoff = 0.0
            entry = gw.spool.pop(seq, None)
            if entry is not None:
                if not entry.acked:
                    entry.acked = True
                    self.ledger.acked(gw.id, entry.readings)
                self._keep(gw, entry)
        self._fill(gw)

    # -- delivered batches kept for resend --------------------------------------------------
    @staticmethod
    def _kept_size(entry: _Spooled) -> int:
        return len(entry.payload) + _KEPT_OVERHEAD

    def _keep(self, gw: _Gateway, entry: _Spooled) -> None:
        """An acknowledged batch: hold it for ``keep_delivered_s`` within the budget."""
        cfg = self.config
        size = self._kept_size(entry)
        if cfg.keep_delivered_s <= 0 or size > cfg.keep_delivered_bytes:
            return
        now = time.monotonic()
        stats = self.stats
        while stats.kept_bytes + size > cfg.keep_delivered_bytes and self._kept_order:
            stats.kept_evicted += self._forget_oldest()
        entry.kept_at = now
        gw.kept[entry.seq] = entry
        self._kept_order.append((now, gw, entry.seq, entry))
        stats.kept_batches += 1
        stats.kept_bytes += size

    def _forget_oldest(self) -> int:
        """Forget the oldest kept batch; 1 if it was still held, 0 for a stale item."""
        kept_at, gw, seq, entry = self._kept_order.popleft()
        if entry.kept_at != kept_at or gw.kept.get(seq) is not entry:
            return 0  # sent again since: a newer item stands for it
        del gw.kept[seq]
        self.stats.kept_batches -= 1
        self.stats.kept_bytes -= self._kept_size(entry)
        return 1

    def _forget_kept(self, now: float) -> None:
        """Forget batches kept longer than ``keep_delivered_s``."""
        cutoff = now - self.config.keep_delivered_s
        order = self._kept_order
        while order and order[0][0] <= cutoff:
            self._forget_oldest()

    def _resend(self, gw: _Gateway, seqs: list[int]) -> dict[str, Any]:
        """Publish again the held batches with these seqs (the ``resend`` command's work,
        on the fleet's loop): kept ones go out first with their original seq and bytes.
        Returns the answer's ``result`` (:func:`telemetry.resend_result`)."""
        requeued: list[_Spooled] = []
        missing: list[int] = []
        waiting = 0
        for seq in seqs:
            if seq in gw.spool:
                waiting += 1
                continue
            entry = gw.kept.pop(seq, None)
            if entry is None:
                missing.append(seq)
                continue
            entry.kept_at = 0.0  # its item in the kept order is stale now
            self.stats.kept_batches -= 1
            self.stats.kept_bytes -= self._kept_size(entry)
            requeued.append(entry)
        if requeued:
            self._resend_log.append((time.monotonic(), gw.id, tuple(e.seq for e in requeued)))
            for entry in requeued:
                gw.spool[entry.seq] = entry
            # Keep the spool in seq order: a reconnect replays it oldest first.
            gw.spool = OrderedDict(sorted(gw.spool.items()))
            if gw.state == "up":
                gw.unsent.extendleft(reversed([e.seq for e in requeued]))
                self._fill(gw)
        stats = self.stats
        stats.resend_requests += 1
        stats.resend_requeued += len(requeued)
        stats.resend_waiting += waiting
        stats.resend_missing += len(missing)
        log.info(
            "resend requested",
            extra={"gateway": gw.id, "requested": len(seqs), "requeued": len(requeued),
                   "waiting": waiting, "missing": len(missing)},
        )  # fmt: skip
        return resend_result(requeued=len(requeued), waiting=waiting, missing=missing)

    # -- commands -----------------------------------------------------------------------------
    async def _command_loop(self, gw: _Gateway, session: MqttSession) -> None:
        """Subscribe to the gateway's ``cmd`` topic and answer each request there."""
        try:
            async with asyncio.timeout(self.config.connect_timeout_s):
                await session.subscribe(gw.cmd_topic, qos=1)
        except MqttSubscribeError as exc:
            self.stats.command_subscribe_refused += 1
            self.stats.last_error = f"{gw.id}: {exc}"
            return
        except (MqttDisconnected, TimeoutError):
            pass  # remembered: made again on the next connect
        async for msg in session.messages():
            await self._answer(gw, session, msg)

    async def _answer(self, gw: _Gateway, session: MqttSession, msg: Message) -> None:
        """One command, answered as ``edge_agent._commands`` does (same results, same
        errors), on the request's response topic with its correlation data."""
        topic = msg.response_topic
        if topic is None:
            self.stats.commands_unanswered += 1
            return
        try:
            req = decode_message(msg.payload, CommandRequest)
            resp = CommandResponse(ok=True, result=self._run_command(gw, session, req))
            self.stats.commands += 1
        except PayloadError as exc:  # InvalidCommand included
            resp = CommandResponse(ok=False, error=str(exc))
            self.stats.commands_refused += 1
        props = publish_properties(correlation_data=msg.correlation_data)
        try:
            async with asyncio.timeout(self.config.connect_timeout_s):
                await session.publish(topic, encode_message(resp), qos=1, properties=props)
        except (MqttError, TimeoutError):
            self.stats.commands_unanswered += 1  # the requester asks again

    def _run_command(
        self, gw: _Gateway, session: MqttSession, req: CommandRequest
    ) -> dict[str, Any]:
        if req.cmd == "ping":
            return {
                "pong": True,
                "ts": time.time_ns(),
                "uptime_s": round(time.monotonic() - (gw.boot_mono or self.stats.started_at), 3),
            }
        if req.cmd == "reannounce":
            birth = encode_message(self.birth(gw.index))
            try:
                session.publish_nowait(gw.status_topic, birth, qos=1, retain=True)
            except MqttError:
                return {"published": False}
            return {"published": True}
        if req.cmd == "health":
            result: dict[str, Any] = msgspec.to_builtins(self._health(gw, time.monotonic()))
            return result
        if req.cmd == "resend":
            return self._resend(gw, parse_resend_args(req.args))
        raise InvalidCommand(
            f"unknown command {req.cmd!r} (known: ping, reannounce, health, resend)"
        )

    # -- hostile gateways ---------------------------------------------------------------------
    def _publish_hostile(self, t_sim: int) -> None:
        """One hostile message (or two: ``seq_jump``) per hostile gateway and step."""
        wall = time.time_ns()
        for gw in self._gws:
            if not gw.hostile_cases:
                continue
            case = gw.hostile_cases[gw.hostile_turn % len(gw.hostile_cases)]
            gw.hostile_turn += 1
            session = gw.session
            for m in hostile_messages(gw.id, case, seq=gw.hostile_turn, sim_ns=t_sim,
                                      wall_ns=wall):  # fmt: skip
                if session is None or gw.state != "up":
                    self.hostile.not_sent(case)
                    continue
                try:
                    fut = session.publish_nowait(gw.topic, m.payload, qos=1)
                except MqttError:
                    self.hostile.not_sent(case)
                    continue
                self.hostile.sent(gw.id, case)
                fut.add_done_callback(functools.partial(self._on_hostile_ack, case, m.readings))

    def _on_hostile_ack(self, case: str, readings: int, fut: asyncio.Future[int]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            self.hostile.not_sent(case)
            return
        self.hostile.answered(case, fut.result(), readings)

    def _fill(self, gw: _Gateway) -> None:
        session = gw.session
        if session is None or gw.state != "up":
            return
        if gw.hold_until and time.monotonic() < gw.hold_until:
            return  # _release_holds picks it up again after the hold
        window = self.scenario.publish.inflight_window
        while gw.unsent and len(gw.inflight) < window:
            seq = gw.unsent.popleft()
            entry = gw.spool.get(seq)
            if entry is None:
                continue
            try:
                fut = session.publish_nowait(gw.topic, entry.payload, qos=1)
            except MqttError:
                gw.unsent.appendleft(seq)  # lost meanwhile: _on_down/_on_up take it from here
                break
            gw.inflight.add(seq)
            fut.add_done_callback(functools.partial(self._on_puback, gw, seq, gw.epoch))
            self.ledger.published(gw.id, replay=entry.sent > 0)
            entry.sent += 1

    def _fill_dirty(self) -> None:
        while self._dirty:
            self._fill(self._dirty.pop())

    def _release_holds(self, now: float) -> None:
        for gw in self._gws:
            if gw.hold_until and now >= gw.hold_until:
                gw.hold_until = 0.0
                self._fill(gw)

    def _health(self, gw: _Gateway, now: float) -> Health:
        spool = gw.spool
        return Health(
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

    def _publish_health(self, now: float) -> None:
        for gw in self._gws:
            session = gw.session
            if session is None or gw.state != "up":
                continue
            health = self._health(gw, now)
            with contextlib.suppress(MqttError):  # lost meanwhile: the next report goes
                session.publish_nowait(gw.health_topic, encode_message(health), qos=0)

    # -- the way out --------------------------------------------------------------------------
    async def _drain(self) -> None:
        deadline = time.monotonic() + self.config.drain_timeout_s
        while time.monotonic() < deadline:
            pending = [g for g in self._gws if g.spool and not (g.uplink_lost or g.rebooting)]
            if not pending:
                return
            self._release_holds(time.monotonic())
            await self._io(0.05)

    def _begin_shutdown(self) -> None:
        """Every gateway task publishes its death (``shutdown``), waits for the PUBACK (at
        most ``_SHUTDOWN_S`` in all) and disconnects; the task group waits for them."""
        self._closing = True
        self._shutdown_at = time.monotonic() + _SHUTDOWN_S
        for gw in self._gws:
            self._wake(gw)


def _reason(exc: ValueError) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
    return str(exc)
