"""Whole simulated gateways publishing straight onto a broker with the wire contract.

One process, one event loop, many gateways. Each gateway has its **own MQTT session**
(:class:`foundation.mqtt.MqttSession`, so its retained birth and its last will are its own,
as on a real gateway); the session layer drives paho inside the loop, so there are no paho
network threads and nothing to hand off::

     event loop (run() -> asyncio.run) ─────────────────────────────────────────────────
       main task (this module): every tick: City.step ─▶ FaultPlan.apply ─▶
                   WireEncoder.batches ─▶ per gateway: seq += 1, payload into the spool,
                   Ledger.created ─▶ FleetSender fills the windows (_sending.py)
       task fleet[<gw>].uplink (one per gateway, in one TaskGroup; _uplink.py): the
                   session, birth on every connect, cut by faults, death on stop
       task fleet[<gw>].commands (one per connected gateway; _commands.py): ping,
                   reannounce, health and resend on the request's response topic
       PUBACK future ─▶ FleetSender: spool.pop(seq), Ledger.acked ─▶ KeptBatches
                   (_gateway.py) ─▶ fill the window
     other threads:  stop(), pause(), inject(fault)  ── SimpleQueue / Event ──▶ main task

**Spool semantics** (as ``edge_agent``, by the same :class:`foundation.SendPolicy`): a batch
is numbered and spooled before it is published and leaves the spool only on PUBACK. The
spool is the session: each connection is a fresh clean-start client, and on every
(re)connect the gateway publishes its birth, then replays every unacknowledged batch oldest
first with its original seq and bytes, then new ones. A gateway that loses its uplink (fault
``uplink_loss``) keeps producing into its spool; one that reboots (``reboot``) produces
nothing while down, and keeps its spool and seq. The broker sees the connection drop without
DISCONNECT and publishes the will.

**Delivered batches are kept** (as ``spool.keep_delivered_s`` on a real gateway) for
``FleetConfig.keep_delivered_s`` (1 h) within ``keep_delivered_bytes`` for the whole fleet,
so that the platform's gap repair can ask for them again with ``resend``. A replay is the
original bytes, so storing it again is an overwrite. The ledger counts a batch acknowledged
once, however often it is sent again.

**Hostile gateways** (fault ``hostile``, :mod:`simulators._hostile`) produce no honest
readings while the fault lasts and publish one hostile message per step instead, counted in
``fleet.hostile`` and never in the ledger.

A PUBACK is not always a delivery: an MQTT v5 broker answers **0x10 No matching
subscribers** when nobody subscribes to the topic, and drops the message. With
``FleetConfig.retry_unrouted`` a batch acked that way stays in the spool and is published
again after the policy's hold. It happens for real: mosquitto 2.0.11 does not restore the
shared subscriptions of offline persistent sessions when it restarts, so until the first
ingest worker has reconnected and subscribed again, telemetry goes to nobody (found by the
chaos run, ``smartcity._chaos``; docs/operations.md). Off by default, so that load runs
against a bare broker, where nobody subscribes, still count what the broker took.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import queue
import random
import threading
import time
from collections.abc import Callable
from typing import Final, NamedTuple

import numpy as np
from pydantic import SecretStr

from foundation import BrokerSetupError, SendPolicy
from foundation.mqtt import MqttConnectError, MqttError
from simulators._city import City, Layout, build_layout
from simulators._errors import BrokerError, ScenarioError
from simulators._faults import ActiveFault, FaultPlan
from simulators._hostile import HOSTILE_CASES, HostileCase, HostileTally, hostile_messages
from simulators._ledger import Ledger
from simulators._scenario import DEVICE_KINDS, DeviceKind, FaultSpec
from simulators._wire import GatewayBatch, WireEncoder, batch_payload
from simulators.fleet._births import birth, health
from simulators.fleet._commands import CommandAnswerer
from simulators.fleet._config import FleetConfig, FleetStats, settings_reason
from simulators.fleet._gateway import Gateway, KeptBatches, Spooled
from simulators.fleet._sending import FleetSender
from simulators.fleet._uplink import GatewayUplinks, cut, wake
from telemetry import Birth, Health, TopicError, Topics, encode_message

__all__ = ["GatewayFleet"]

_MISC_EVERY_S: Final = 1.0


class _Limits(NamedTuple):
    """What ends a run (see :meth:`GatewayFleet.run`) and how often it reports."""

    duration_s: float | None
    ticks: int | None
    progress: Callable[[FleetStats], None] | None
    progress_every_s: float


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
        self.config.check_cluster_ids(self.scenario.topic_root, self.layout.gateway_ids)
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
        policy = SendPolicy(
            window=self.scenario.publish.inflight_window,
            retry_unrouted=self.config.retry_unrouted,
        )
        self._gws = [
            Gateway(
                index=i,
                id=g,
                topic=self.topics.telemetry(g),
                status_topic=self.topics.status(g),
                health_topic=self.topics.health(g),
                cmd_topic=self.topics.command(g),
                hold=policy.unrouted_hold(),
            )
            for i, g in enumerate(self.layout.gateway_ids)
        ]
        self._stop = threading.Event()
        self._paused = threading.Event()
        #: What hostile gateways sent (never in the ledger).
        self.hostile = HostileTally()
        self._commands: queue.SimpleQueue[FaultSpec] = queue.SimpleQueue()
        try:
            self._access = self.config.broker_access()
        except ValueError as exc:
            raise BrokerError(f"broker settings: {settings_reason(exc)}") from exc
        self._jitter = random.Random(self.scenario.seed)
        self._tick = 0
        self._running = False
        self.kept = KeptBatches(
            keep_s=self.config.keep_delivered_s,
            budget_bytes=self.config.keep_delivered_bytes,
            stats=self.stats,
        )
        self.sender = FleetSender(
            policy=policy, ledger=self.ledger, stats=self.stats, kept=self.kept, rng=self._jitter
        )
        self.uplinks = GatewayUplinks(
            config=self.config,
            publish=self.scenario.publish,
            stats=self.stats,
            sender=self.sender,
            commands=CommandAnswerer(
                stats=self.stats,
                sender=self.sender,
                timeout_s=self.config.connect_timeout_s,
                birth=lambda gw: self.birth(gw.index),
                health=self._health,
            ),
            birth=lambda gw: self.birth(gw.index),
            sim_time_ns=lambda: self.sim_time_ns,
            rng=self._jitter,
        )

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
        return list(self.sender.resend_log)

    @property
    def hostile_gateway_ids(self) -> list[str]:
        """Gateways a ``hostile`` fault has hit so far (their messages are in
        :attr:`hostile`, not in the ledger)."""
        return sorted(self.hostile.gateways)

    def birth(self, index: int) -> Birth:
        """Gateway ``index``'s birth at the current simulated time."""
        return birth(self.layout, index, self.sim_time_ns)

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
            gw.spool[seq] = Spooled(seq, payload, n)
            self.ledger.created(gw.id, seq, n, b.min_ts, b.max_ts, payload)
            self.sender.spooled(gw, seq)
            total += n
        self.stats.generated_readings += total
        return total

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
            ssl_context = None if self._access.tls is None else self._access.tls.ssl_context()
            password = self._access.read_password()
        except BrokerSetupError as exc:
            raise BrokerError(f"broker settings: {exc}") from exc
        access = self._access.model_copy(
            update={
                "password": None if password is None else SecretStr(password),
                "password_file": None,
            }
        )
        self.uplinks.open(access, ssl_context)
        self._running = True
        self.stats.started_at = time.monotonic()
        try:
            asyncio.run(self._run(_Limits(duration_s, ticks, progress, progress_every_s)))
        finally:
            self._running = False
            self.sender.wake = None
            for gw in self._gws:
                gw.wake = None
        return self.stats

    async def _run(self, limits: _Limits) -> None:
        loop = asyncio.get_running_loop()
        self.sender.wake = asyncio.Event()
        for gw in self._gws:
            gw.wake = asyncio.Event()
        error: BrokerError | None = None
        async with asyncio.TaskGroup() as tg:
            try:
                # One gateway first, waiting for its CONNACK: fail fast on a wrong broker.
                first: asyncio.Future[None] = loop.create_future()
                gw0 = self._gws[0]
                tg.create_task(self.uplinks.run(gw0, first), name=f"fleet[{gw0.id}].uplink")
                try:
                    async with asyncio.timeout(self.config.connect_timeout_s + 1.0):
                        await first
                except (MqttConnectError, TimeoutError) as exc:
                    url = f"{self.config.host}:{self.config.port}"
                    error = BrokerError(str(exc) or "no CONNACK in time", url=url)
                if error is None:
                    for gw in self._gws[1:]:
                        tg.create_task(self.uplinks.run(gw, None), name=f"fleet[{gw.id}].uplink")
                    await self._main_loop(limits)
                    await self._drain()
            finally:
                self.uplinks.begin_shutdown(self._gws)
        if error is not None:
            raise error

    async def _main_loop(self, limits: _Limits) -> None:
        duration_s, ticks, progress, progress_every_s = limits
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
        sender = self.sender
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
            elif now >= due_at and (
                speed > 0 or sender.backlog(self._gws) < self.config.max_backlog_batches
            ):
                self.stats.lag_s = now - due_at
                t_sim = self.sim_time_ns
                self._apply_gateway_faults(t_sim)
                self.spool_batches(self.step())
                self._publish_hostile(t_sim)
                sender.fill_dirty()
                timeout = 0.0
            else:
                timeout = max(0.0, min(due_at - now, 0.05)) if speed > 0 else 0.01
            await self._io(timeout)
            if now >= next_misc:
                next_misc = now + _MISC_EVERY_S
                sender.release_holds(self._gws, now)
                self.kept.forget_expired(now)
            if now >= next_health:
                next_health = now + health_every
                self._publish_health(now)
            if progress is not None and now >= next_progress:
                next_progress = now + progress_every_s
                progress(self.stats)

    async def _io(self, at_most_s: float) -> None:
        """Let the loop run network I/O for up to ``at_most_s`` (less when a gateway came up
        or has new batches to send)."""
        wake_event = self.sender.wake
        assert wake_event is not None
        if at_most_s <= 0 or wake_event.is_set():
            await asyncio.sleep(0)
        else:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(at_most_s):
                    await wake_event.wait()
        wake_event.clear()
        self.sender.fill_dirty()

    def _take_commands(self) -> None:
        while True:
            try:
                spec = self._commands.get_nowait()
            except queue.Empty:
                return
            self.plan.add(spec, origin_ns=self.sim_time_ns)

    def _apply_gateway_faults(self, t_ns: int) -> None:
        lost, rebooting = self.plan.gateways_down(t_ns)
        was = np.array([g.down for g in self._gws], dtype=np.bool_)
        down = lost | rebooting
        for i in np.flatnonzero(down ^ was).tolist():
            gw = self._gws[i]
            was_rebooting = gw.rebooting
            gw.uplink_lost, gw.rebooting = bool(lost[i]), bool(rebooting[i])
            if down[i]:
                cut(gw)
            elif was_rebooting:
                gw.boot_mono = time.monotonic()
            wake(gw)
        cases: dict[int, tuple[HostileCase, ...]] = {}
        for gateways, spec in self.plan.hostile_faults(t_ns):
            for i in gateways.tolist():
                cases[i] = tuple(spec.hostile_cases) or HOSTILE_CASES
        for gw in self._gws:
            gw.hostile_cases = cases.get(gw.index, ())

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

    # -- health -------------------------------------------------------------------------------
    def _health(self, gw: Gateway, now: float) -> Health:
        uptime = now - (gw.boot_mono or self.stats.started_at)
        return health(gw, ts=self.sim_time_ns, uptime_s=uptime)

    def _publish_health(self, now: float) -> None:
        for gw in self._gws:
            session = gw.session
            if session is None or gw.state != "up":
                continue
            report = self._health(gw, now)
            with contextlib.suppress(MqttError):  # lost meanwhile: the next report goes
                session.publish_nowait(gw.health_topic, encode_message(report), qos=0)

    # -- the way out --------------------------------------------------------------------------
    async def _drain(self) -> None:
        deadline = time.monotonic() + self.config.drain_timeout_s
        while time.monotonic() < deadline:
            pending = [g for g in self._gws if g.spool and not g.down]
            if not pending:
                return
            self.sender.release_holds(self._gws, time.monotonic())
            await self._io(0.05)
