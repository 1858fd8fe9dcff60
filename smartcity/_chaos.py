"""Chaos run: a fleet publishing while every server-side component fails, then the ledger
is compared with InfluxDB.

It shows the platform's claim (nothing lost, nothing doubled) with everything failing at
once, on one machine, from real processes::

    mosquitto (persistence, queue budget)   ◀── GatewayFleet (one connection per gateway,
        │ $share/ingest/<root>/v1/+/telemetry       spool + seq replay, kept batches answer
        │                                           resend, ledger; --hostile N beside them)
        ▼                   ▲ resend (cmd)
    ingest-0, ingest-1 ──▶ influxd ◀── api (python -m smartcity api run: gap repair every
    (python -m ingest run, own process groups)      gap_repair_interval_s, live subscription)

    timeline:  start ─ reference (no faults) ─┬─ chaos (seeded schedule) ─ quiet ─┬─ stop fleet
                                              │                                   └─ drain, compare
    events:    worker_kill     SIGKILL ingest-N, restart with the same client id after a few s
               influxd_outage  SIGTERM influxd, start it again 10-30 s later (same data)
               broker_restart  SIGTERM mosquitto (it saves its persistence), start it again on
                               the same port and data directory: sessions must survive
               broker_kill     SIGKILL mosquitto, either just after it saved its persistence
                               (SIGUSR1, then the kill) or with whatever it saved last
                               (autosave_interval 60 s); start it again on the same data. What
                               it held in memory only is gone: gap repair (the API asking the
                               gateways to resend) refills the holes; ``repair_s`` is the time
                               from the restart to the last hole refilled
               uplink_loss     a share of the gateways lose their connection (spool, replay)
               reboot          a share of the gateways reboot (produce nothing, keep the spool)

The schedule (:func:`plan_chaos`) is drawn from the seed: at least one event of each kind,
then more at random gaps; events on different components overlap, two events never hit the
same component at once, and all end before the quiet tail, in which the time the system takes
to catch up after the last fault is measured. Workers and the API that exit on their own (for
example a worker restarted while influxd is still down gives up after 30 s) are restarted like
a supervisor would and counted (``service_crashes``); the schedule's own kills are not.

The simulated clock is set whole weeks back (same weekday and time of day as the scenario's
start), so that it stays behind the wall clock for the whole run (ingest refuses readings
from the future) and the API's completeness window (set to cover it) sees every batch.

At the end the fleet **pauses**: it stops producing but stays connected, so its spools drain
and it still answers ``resend``; once InfluxDB holds everything acknowledged, it stops.

Hostile gateways (``hostile``, fault ``hostile`` of the simulators) publish beside the honest
ones; their messages are tallied apart (``hostile_cases``) and only the honest ledger is
compared with InfluxDB.

The verdict (:class:`ChaosReport`): readings the broker acknowledged to the fleet (the ledger)
against distinct points in InfluxDB (``lost``, ``extra``), and per gateway the bookkeeping
points of ingest (``ingest_batch``: one per batch, time derived from the batch, so a replay
overwrites it): a seq stored at two points is a duplicate, a seq the broker acknowledged and
InfluxDB lacks is a loss.

Everything runs in the caller's thread except the fleet (its own thread) and a monitor that
samples InfluxDB once a second; every child process is stopped in ``finally``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from foundation import free_port
from simulators import (
    FaultSpec,
    FleetConfig,
    GatewayFleet,
    GatewayProfile,
    HostileCase,
    Scenario,
    SimulatorError,
    compare_with_influx,
    load_scenario,
)
from smartcity._localstack import Influxd, Mosquitto, ServiceError
from telemetry import BOOKKEEPING_MEASUREMENT

__all__ = [
    "CHAOS_KINDS",
    "ChaosConfig",
    "ChaosEvent",
    "ChaosKind",
    "ChaosReport",
    "plan_chaos",
    "run_chaos",
    "scaled_scenario",
]

ChaosKind = Literal[
    "worker_kill", "influxd_outage", "broker_restart", "broker_kill", "uplink_loss", "reboot"
]
CHAOS_KINDS: Final[tuple[ChaosKind, ...]] = (
    "influxd_outage",
    "broker_restart",
    "broker_kill",
    "worker_kill",
    "uplink_loss",
    "reboot",
)
BOOKKEEPING: Final = BOOKKEEPING_MEASUREMENT
_POLL_S: Final = 1.0
#: Gateway id prefix of the hostile gateways (never an honest profile's prefix).
HOSTILE_PREFIX: Final = "hostile"
_WEEK_S: Final = 7 * 86_400
_BROKER_KILL_MODES: Final = ("after autosave", "before autosave")


@dataclass(frozen=True, kw_only=True)
class ChaosConfig:
    """What a chaos run does. Durations are wall seconds; ranges are ``(low, high)``."""

    #: Gateways of the fleet (the scenario is scaled to this many, see :func:`scaled_scenario`).
    gateways: int = 200
    #: Scenario name or file; its gateway profiles are scaled to ``gateways``.
    scenario: str = "load-1000"
    #: Simulated seconds per wall second: the offered load is fixed, not "as fast as possible",
    #: so that the broker queue does not grow without bound while ingest is down.
    speed: float = 20.0
    seed: int = 1
    #: Fleet publishing, ingest storing, no fault: the throughput reference.
    reference_s: float = 30.0
    #: The chaos phase, the quiet tail included.
    duration_s: float = 300.0
    #: No fault starts or lasts into the last ``quiet_s`` of the chaos phase.
    quiet_s: float = 45.0
    #: Wall seconds between the starts of two random events (besides one of each kind).
    gap_s: tuple[float, float] = (5.0, 15.0)
    worker_down_s: tuple[float, float] = (2.0, 6.0)
    influxd_down_s: tuple[float, float] = (10.0, 30.0)
    broker_down_s: tuple[float, float] = (0.5, 3.0)
    gateway_fault_s: tuple[float, float] = (5.0, 25.0)
    #: Share of the gateways an uplink_loss or reboot event hits.
    gateway_fraction: float = 0.1
    workers: int = 2
    #: Hostile gateways beside the honest ones (``gateways``): fault ``hostile`` for the run,
    #: sending ``hostile_cases`` in turn (empty: every case of ``simulators._hostile``).
    hostile: int = 0
    hostile_cases: tuple[HostileCase, ...] = ()
    #: The kinds of event the schedule draws from (each at least once).
    kinds: tuple[ChaosKind, ...] = CHAOS_KINDS
    #: The API (gap repair) runs beside ingest; its rounds come this often.
    api: bool = True
    gap_repair_interval_s: float = 5.0
    #: After the fleet stops: how long to wait for InfluxDB to hold everything acknowledged.
    drain_timeout_s: float = 180.0
    #: Mosquitto's queue budget for offline persistent sessions (docs/operations.md): big
    #: enough for every worker's share during the longest outage, capped in bytes.
    max_queued_messages: int = 1_000_000
    max_queued_bytes: int = 1024**3
    database: str = "chaos"
    topic_root: str = "sc"
    #: Where services keep their data and logs (default: a temporary directory, removed).
    data_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.gateways < 1 or self.workers < 1:
            raise ValueError("gateways and workers must be at least 1")
        if self.hostile < 0:
            raise ValueError("hostile must be >= 0")
        if not set(self.kinds) <= set(CHAOS_KINDS):
            raise ValueError(f"kinds must be among {', '.join(CHAOS_KINDS)}")
        if self.speed <= 0:
            raise ValueError("speed must be > 0: gateway faults last simulated seconds")
        longest = max((self.down_range(k)[1] for k in self.kinds), default=0.0)
        if self.duration_s - self.quiet_s < longest + 1:
            raise ValueError(
                f"duration_s - quiet_s must exceed the longest event ({longest:g} s)"
            )


    def down_range(self, kind: ChaosKind) -> tuple[float, float]:
        """How long an event of ``kind`` lasts, (shortest, longest) in wall seconds."""
        return {
            "worker_kill": self.worker_down_s,
            "influxd_outage": self.influxd_down_s,
            "broker_restart": self.broker_down_s,
            "broker_kill": self.broker_down_s,
            "uplink_loss": self.gateway_fault_s,
            "reboot": self.gateway_fault_s,
        }[kind]


@dataclass(slots=True)
class ChaosEvent:
    """One planned fault and, once run, when it really started and ended."""

    kind: ChaosKind
    #: Planned start and length, wall seconds from the start of the chaos phase.
    at_s: float
    down_s: float
    #: ``ingest-N`` for worker_kill, gateways hit for gateway faults.
    target: str = ""
    started_s: float | None = None
    ended_s: float | None = None

    @property
    def end_s(self) -> float:
        return self.at_s + self.down_s


@dataclass(slots=True)
class ChaosReport:
    """The outcome of a run; ``to_dict()`` is what the CLI and the benchmark print."""

    gateways: int
    seed: int
    speed: float
    reference_s: float
    chaos_s: float
    #: Readings created by the fleet, acknowledged by the broker, still spooled at the end.
    created: int = 0
    sent: int = 0
    unacked: int = 0
    #: Distinct points in InfluxDB for the ledger's gateways and window.
    stored: int = 0
    lost: int = 0
    #: Distinct points beyond what was acknowledged (a reading stored under two identities).
    extra: int = 0
    acked_batches: int = 0
    #: Per-gateway seq coverage from ``ingest_batch``.
    stored_batches: int = 0
    missing_seqs: int = 0
    #: Bookkeeping points beyond the distinct seqs (a batch stored at two points).
    duplicate_seqs: int = 0
    #: Seqs stored that the ledger never saw acknowledged (outside first..last).
    unknown_seqs: int = 0
    #: ``sum(readings)`` of the bookkeeping points against the distinct reading points.
    bookkeeping_readings: int = 0
    replays: int = 0
    #: Publishes the broker acked with 0x10 No matching subscribers (kept and sent again).
    no_subscribers: int = 0
    events: dict[str, int] = field(default_factory=dict)
    unplanned_worker_restarts: int = 0
    #: The API process exited on its own and was restarted.
    api_restarts: int = 0
    #: Broker restart after a broker_kill → the last hole it left refilled (max over kills;
    #: 0 when a kill left no hole; None without a broker_kill).
    repair_s: float | None = None
    #: Per broker_kill: mode, restart time (s into the run), batches resent, repair_s.
    repairs: list[dict[str, Any]] = field(default_factory=list)
    #: The fleet's answers to the API's resend requests.
    resend_requests: int = 0
    resend_requeued: int = 0
    resend_missing: int = 0
    hostile_gateways: int = 0
    #: Per hostile case: messages sent, acked, refused... (never in the honest ledger).
    hostile_cases: dict[str, dict[str, int]] = field(default_factory=dict)
    #: Last fault ended → InfluxDB held everything acknowledged at that moment.
    catch_up_after_last_fault_s: float | None = None
    #: Fleet paused (stopped producing) → InfluxDB held everything acknowledged.
    final_drain_s: float | None = None
    drained: bool = False
    reference_acked_per_s: float = 0.0
    chaos_acked_per_s: float = 0.0
    reference_stored_per_s: float = 0.0
    chaos_stored_per_s: float = 0.0
    timeline: list[dict[str, Any]] = field(default_factory=list)

    @property
    def duplicates(self) -> int:
        return self.extra + self.duplicate_seqs

    @property
    def service_crashes(self) -> int:
        """Ingest workers and API processes that exited on their own (not the schedule's)."""
        return self.unplanned_worker_restarts + self.api_restarts

    @property
    def ok(self) -> bool:
        return (
            self.drained
            and self.lost == 0
            and self.duplicates == 0
            and self.missing_seqs == 0
            and self.unknown_seqs == 0
            and self.bookkeeping_readings == self.stored
        )

    def to_dict(self, *, timeline: bool = False) -> dict[str, Any]:
        data = asdict(self)
        if not timeline:
            data.pop("timeline")
        data["duplicates"] = self.duplicates
        data["honest_lost"] = self.lost
        data["honest_duplicated"] = self.duplicates
        data["service_crashes"] = self.service_crashes
        data["ok"] = self.ok
        ref, chaos = self.reference_stored_per_s, self.chaos_stored_per_s
        data["stored_throughput_ratio"] = round(chaos / ref, 3) if ref else None
        ref_a, chaos_a = self.reference_acked_per_s, self.chaos_acked_per_s
        data["acked_throughput_ratio"] = round(chaos_a / ref_a, 3) if ref_a else None
        for key in ("reference_acked_per_s", "chaos_acked_per_s", "reference_stored_per_s",
                    "chaos_stored_per_s", "catch_up_after_last_fault_s", "final_drain_s",
                    "repair_s"):
            if data[key] is not None:
                data[key] = round(data[key], 1)
        return data


# -- the schedule ---------------------------------------------------------------------------
def plan_chaos(config: ChaosConfig) -> list[ChaosEvent]:
    """The seeded schedule: one event of each kind, then more at random gaps.

    Two events on the same component (influxd, the broker, one worker) never overlap, so each
    stop has its start; events on different components overlap freely. Every event ends by
    ``duration_s - quiet_s``.
    """
    rng = random.Random(config.seed)
    horizon = config.duration_s - config.quiet_s
    busy: dict[str, list[tuple[float, float]]] = {}
    events: list[ChaosEvent] = []
    ranges = {kind: config.down_range(kind) for kind in CHAOS_KINDS}
    n_hit = max(1, round(config.gateway_fraction * config.gateways))

    def place(kind: ChaosKind, at: float) -> bool:
        low, high = ranges[kind]
        down = rng.uniform(low, high)
        if at + down > horizon:
            return False
        if kind == "worker_kill":
            resource = target = f"ingest-{rng.randrange(config.workers)}"
        elif kind in ("uplink_loss", "reboot"):
            resource, target = f"{kind}-{len(events)}", f"{n_hit} gateways"
        elif kind in ("broker_restart", "broker_kill"):
            resource = "broker"
            target = rng.choice(_BROKER_KILL_MODES) if kind == "broker_kill" else ""
        else:
            resource, target = kind, ""
        # A little room around a component's events: a restart must finish before a stop.
        if any(at < b + 1.0 and a < at + down + 1.0 for a, b in busy.get(resource, [])):
            return False
        busy.setdefault(resource, []).append((at, at + down))
        events.append(ChaosEvent(kind=kind, at_s=round(at, 2), down_s=round(down, 2),
                                 target=target))  # fmt: skip
        return True

    for kind in config.kinds:
        for _ in range(200):
            if place(kind, rng.uniform(0, horizon - ranges[kind][1])):
                break
        else:
            raise ValueError(f"no room for a {kind} event; lengthen duration_s")
    at = 0.0
    kinds = list(config.kinds)
    while kinds:
        at += rng.uniform(*config.gap_s)
        if at >= horizon:
            break
        place(rng.choice(kinds), at)
    events.sort(key=lambda e: e.at_s)
    return events


def scaled_scenario(config: ChaosConfig) -> Scenario:
    """``config.scenario`` with its gateway profiles scaled to ``config.gateways`` in total
    (each profile keeps its share, at least one gateway), at ``config.speed``, faults off."""
    base = load_scenario(config.scenario)
    total = base.gateway_count
    shares = [p.count * config.gateways / total for p in base.gateways]
    counts = [max(1, math.floor(s)) for s in shares]
    # Largest remainders first, until the total matches (or every profile has one).
    order = sorted(range(len(shares)), key=lambda i: shares[i] - math.floor(shares[i]),
                   reverse=True)  # fmt: skip
    i = 0
    while sum(counts) < config.gateways:
        counts[order[i % len(order)]] += 1
        i += 1
    while sum(counts) > config.gateways and max(counts) > 1:
        counts[counts.index(max(counts))] -= 1
    profiles = [
        GatewayProfile(prefix=p.prefix, count=c, devices=dict(p.devices))
        for p, c in zip(base.gateways, counts, strict=True)
    ]
    faults: list[dict[str, Any]] = []
    if config.hostile:
        if any(p.prefix == HOSTILE_PREFIX for p in profiles):
            raise ValueError(f"the scenario already has a {HOSTILE_PREFIX!r} profile")
        profiles.append(
            GatewayProfile(prefix=HOSTILE_PREFIX, count=config.hostile, devices={"loop": 1})
        )
        ids = [f"{HOSTILE_PREFIX}-{i:04d}" for i in range(config.hostile)]
        faults.append(
            FaultSpec(
                type="hostile", gateways=ids, hostile_cases=list(config.hostile_cases)
            ).model_dump()
        )
    return base.with_overrides(
        gateways=[p.model_dump() for p in profiles],
        speed=config.speed,
        seed=config.seed,
        faults=faults,
        topic_root=config.topic_root,
    )


def _sim_start_ns(scenario: Scenario, config: ChaosConfig, now_ns: int) -> int:
    """The scenario's start moved back by whole weeks until the simulated clock stays at
    least 10 minutes behind the wall clock for the whole run (a week-aligned shift keeps
    weekday and time of day, so the city looks the same)."""
    span_ns = round((config.reference_s + config.duration_s + 120) * config.speed * 1e9)
    latest = now_ns - span_ns - 600 * 10**9
    start = scenario.start_ns(now_ns)
    week = _WEEK_S * 10**9
    if start > latest:
        start -= -(-(start - latest) // week) * week
    else:
        start += (latest - start) // week * week
    return start


# -- processes ------------------------------------------------------------------------------
class _Worker:
    """One ingest worker process (``python -m ingest run``) in its own process group."""

    def __init__(self, client_id: str, config_path: Path, log_path: Path) -> None:
        self.client_id = client_id
        self.config_path = config_path
        self.log_path = log_path
        self.metrics_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        #: Down on purpose (killed by the schedule): the supervisor leaves it alone.
        self.held_down = False

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ingest", "run", "--config", str(self.config_path),
                 "--metrics-port", str(self.metrics_port)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                process_group=0,
            )  # fmt: skip

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def connected(self) -> bool:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                text: str = resp.read().decode()
        except OSError:
            return False
        return "smartcity_ingest_broker_connected 1.0" in text

    def kill(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()

    def terminate(self, timeout: float = 30.0) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class _Api:
    """The API process (``python -m smartcity api run``), for its gap repair: every
    ``gap_repair_interval_s`` it asks online gateways for the batches ingest's bookkeeping
    lacks. Settings through flags and ``SMARTCITY_API_*`` variables, as an operator would."""

    def __init__(self, config: ChaosConfig, broker: Mosquitto, influxd: Influxd,
                 data: Path, completeness_window_s: int) -> None:  # fmt: skip
        self.port = free_port()
        self.log_path = data / "api.log"
        self.command = [
            sys.executable, "-m", "smartcity", "api", "run", "--host", "127.0.0.1",
            "--port", str(self.port), "--mqtt-host", broker.host,
            "--mqtt-port", str(broker.port), "--topic-root", config.topic_root,
            "--influx-url", influxd.url, "--database", config.database,
            "--database-url", f"sqlite:///{data / 'api.sqlite3'}", "--log-format", "json",
        ]  # fmt: skip
        self.env = {
            "SMARTCITY_API_MQTT__CLIENT_ID": "chaos-api",
            "SMARTCITY_API_GAP_REPAIR_INTERVAL_S": str(config.gap_repair_interval_s),
            # The simulated clock runs behind the wall clock (see _sim_start_ns): the window
            # must reach back to the start of the run.
            "SMARTCITY_API_COMPLETENESS_WINDOW": f"{completeness_window_s}s",
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.stopping = False

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                process_group=0, env={**os.environ, **self.env},
            )  # fmt: skip

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.port}/readyz", timeout=2
            ) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def terminate(self, timeout: float = 30.0) -> None:
        self.stopping = True
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _kill_broker(broker: Mosquitto, *, save_first: bool) -> bool:
    """SIGKILL mosquitto; with ``save_first``, right after it wrote its persistence file
    (SIGUSR1 makes mosquitto save at once). True when the save was seen on disk."""
    saved = False
    pid = broker.pid
    if save_first and pid is not None:
        db = broker.data_dir / "mosquitto.db"
        before = db.stat().st_mtime_ns if db.exists() else 0
        os.kill(pid, signal.SIGUSR1)
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            if db.exists() and db.stat().st_mtime_ns != before:
                saved = True
                time.sleep(0.05)  # let it finish the file it started
                break
            time.sleep(0.01)
    broker.kill()
    return saved


def _worker_config(config: ChaosConfig, client_id: str, broker: Mosquitto,
                   influxd: Influxd) -> dict[str, Any]:  # fmt: skip
    return {
        "mqtt": {"host": broker.host, "port": broker.port, "client_id": client_id,
                 "group": "ingest", "topic_root": config.topic_root},
        "influx": {"url": influxd.url, "database": config.database},
        "log_level": "INFO",
        "log_format": "json",
    }  # fmt: skip


# -- the run --------------------------------------------------------------------------------
@dataclass(slots=True)
class _Sample:
    t: float
    acked: int
    stored: int | None


class _Monitor(threading.Thread):
    """Samples (time, readings acknowledged to the fleet, readings stored) once a second.

    Stored readings are ``sum(readings)`` of the honest gateways' bookkeeping points (one per
    batch: cheap to sum, and a replay overwrites its point); ``None`` while influxd does not
    answer. A thread
    of its own, so a query hanging on a stopping influxd never delays the schedule.
    """

    def __init__(self, influxd: Influxd, database: str, fleet: GatewayFleet) -> None:
        super().__init__(name="chaos.monitor", daemon=True)
        self.influxd = influxd
        self.database = database
        self.fleet = fleet
        self.samples: list[_Sample] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def stored(self) -> int | None:
        try:
            answer = self.influxd.query(
                f'SELECT sum("readings") FROM "{BOOKKEEPING}" '  # noqa: S608
                f'WHERE "gateway" !~ /^{HOSTILE_PREFIX}-/',
                db=self.database,
            )
        except (ServiceError, OSError):
            return None
        series = answer["results"][0].get("series")
        return int(series[0]["values"][0][1]) if series else 0

    def run(self) -> None:
        while not self._stop.is_set():
            acked = self.fleet.ledger.readings
            stored = self.stored()
            with self._lock:
                self.samples.append(_Sample(time.monotonic(), acked, stored))
            self._stop.wait(_POLL_S)

    def last(self) -> _Sample | None:
        with self._lock:
            return self.samples[-1] if self.samples else None

    def first_stored_at_least(self, target: int, after: float) -> float | None:
        with self._lock:
            for s in self.samples:
                if s.t >= after and s.stored is not None and s.stored >= target:
                    return s.t
        return None

    def stop(self) -> None:
        self._stop.set()


class _Run:
    def __init__(self, config: ChaosConfig, data_dir: Path, say: Callable[[str], None]) -> None:
        self.config = config
        self.data = data_dir
        self.say = say
        self.broker = Mosquitto(
            data_dir=data_dir / "mosquitto",
            max_queued_messages=config.max_queued_messages,
            max_queued_bytes=config.max_queued_bytes,
        )
        self.influxd = Influxd(data_dir=data_dir / "influxd")
        self.workers: list[_Worker] = []
        self.api: _Api | None = None
        self.api_restarts = 0
        #: Per broker_kill: when mosquitto was started again (monotonic, wall) and the mode.
        self.kills: list[dict[str, Any]] = []
        self.fleet: GatewayFleet | None = None
        self.fleet_thread: threading.Thread | None = None
        self.fleet_error: BaseException | None = None
        self.monitor: _Monitor | None = None
        self.t0 = time.monotonic()
        self.unplanned = 0
        self.timeline: list[dict[str, Any]] = []

    def note(self, what: str, **details: Any) -> None:
        t = time.monotonic() - self.t0
        self.timeline.append({"t": round(t, 2), "what": what, **details})
        extra = " ".join(f"{k}={v}" for k, v in details.items())
        self.say(f"[chaos] {t:7.1f}s {what} {extra}".rstrip())

    # -- start and stop --------------------------------------------------------------------
    def start(self) -> None:
        cfg = self.config
        self.note("starting mosquitto", url=self.broker.url)
        self.broker.start()
        self.note("starting influxd", url=self.influxd.url)
        self.influxd.start()
        self.influxd.create_database(cfg.database)
        for n in range(cfg.workers):
            cid = f"ingest-{n}"
            path = self.data / f"{cid}.yaml"
            path.write_text(json.dumps(_worker_config(cfg, cid, self.broker, self.influxd)))
            worker = _Worker(cid, path, self.data / f"{cid}.log")
            self.workers.append(worker)
            worker.start()
        # Sinks first: on a first start the workers have no session yet, and a message
        # published before they subscribed would go to nobody.
        deadline = time.monotonic() + 60
        while not all(w.connected() for w in self.workers):
            for w in self.workers:
                if not w.running:
                    raise SimulatorError(f"{w.client_id} exited at start; see {w.log_path}")
            if time.monotonic() > deadline:
                raise SimulatorError("ingest workers did not connect within 60 s")
            time.sleep(0.2)
        self.note("workers connected", workers=cfg.workers)
        scenario = scaled_scenario(cfg)
        now = time.time_ns()
        start_ns = _sim_start_ns(scenario, cfg, now)
        if cfg.api:
            # From the simulated start to the end of the run, with an hour to spare.
            window = (now - start_ns) // 10**9 + round(
                cfg.reference_s + cfg.duration_s + cfg.drain_timeout_s + 3600
            )
            self.api = _Api(cfg, self.broker, self.influxd, self.data, int(window))
            self.api.start()
            deadline = time.monotonic() + 60
            while not self.api.ready():
                if not self.api.running:
                    raise SimulatorError(f"the API exited at start; see {self.api.log_path}")
                if time.monotonic() > deadline:
                    raise SimulatorError("the API was not ready within 60 s")
                time.sleep(0.2)
            self.note("api ready", gap_repair_interval_s=cfg.gap_repair_interval_s)
        self.fleet = GatewayFleet(
            FleetConfig(
                scenario=scenario, host=self.broker.host, port=self.broker.port,
                client_prefix="chaos", drain_timeout_s=min(cfg.drain_timeout_s, 120.0),
                retry_unrouted=True, start_ns=start_ns,
            )
        )  # fmt: skip
        self.fleet_thread = threading.Thread(target=self._run_fleet, name="chaos.fleet",
                                             daemon=True)  # fmt: skip
        self.fleet_thread.start()
        self.monitor = _Monitor(self.influxd, cfg.database, self.fleet)
        self.monitor.start()
        self.note("fleet started", gateways=self.fleet.layout.gateways, speed=cfg.speed)

    def _run_fleet(self) -> None:
        assert self.fleet is not None
        try:
            self.fleet.run()
        except BaseException as exc:  # noqa: BLE001 - handed to the controlling thread
            self.fleet_error = exc

    def close(self) -> None:
        """Stop everything that is still running; safe to call more than once."""
        if self.fleet is not None:
            self.fleet.stop()
        if self.fleet_thread is not None:
            self.fleet_thread.join(180)
        if self.monitor is not None:
            self.monitor.stop()
        if self.api is not None:
            self.api.terminate()
        for w in self.workers:
            w.terminate()
        self.influxd.stop()
        self.broker.stop()

    # -- faults ------------------------------------------------------------------------------
    def worker(self, client_id: str) -> _Worker:
        return next(w for w in self.workers if w.client_id == client_id)

    def begin(self, event: ChaosEvent, now: float) -> None:
        cfg = self.config
        event.started_s = now
        if event.kind == "worker_kill":
            w = self.worker(event.target)
            w.held_down = True
            w.kill()
            self.note("SIGKILL", worker=w.client_id, down_s=event.down_s)
        elif event.kind == "influxd_outage":
            self.influxd.stop()
            self.note("influxd stopped", down_s=event.down_s)
        elif event.kind == "broker_restart":
            self.broker.stop()
            self.note("mosquitto stopped (SIGTERM)", down_s=event.down_s)
        elif event.kind == "broker_kill":
            save_first = event.target == "after autosave"
            saved = _kill_broker(self.broker, save_first=save_first)
            self.note("mosquitto SIGKILL", mode=event.target, saved=saved, down_s=event.down_s)
        else:
            assert self.fleet is not None
            n = max(1, round(cfg.gateway_fraction * self.fleet.layout.gateways))
            self.fleet.inject(
                FaultSpec(type=event.kind, at_s=0, duration_s=event.down_s * cfg.speed, count=n)
            )
            self.note(event.kind, gateways=n, down_s=event.down_s)

    def end(self, event: ChaosEvent) -> None:
        if event.kind == "worker_kill":
            w = self.worker(event.target)
            if not w.running:
                w.start()
            w.held_down = False
            self.note("restarted", worker=w.client_id)
        elif event.kind == "influxd_outage":
            self.influxd.start(timeout=60)
            self.note("influxd started")
        elif event.kind in ("broker_restart", "broker_kill"):
            self.broker.start(timeout=30)
            if event.kind == "broker_kill":
                self.kills.append(
                    {"mode": event.target, "t": time.monotonic(), "wall": time.time()}
                )
            self.note("mosquitto started", port=self.broker.port)
        else:
            self.note(f"{event.kind} over")

    def supervise(self) -> None:
        """Restart workers and the API when they exited on their own (as systemd
        ``Restart=always`` would), and count them."""
        for w in self.workers:
            if not w.held_down and not w.running:
                code = None if w.proc is None else w.proc.returncode
                self.unplanned += 1
                self.note("worker exited, restarting", worker=w.client_id, code=code)
                w.start()
        api = self.api
        if api is not None and not api.stopping and not api.running:
            code = None if api.proc is None else api.proc.returncode
            self.api_restarts += 1
            self.note("api exited, restarting", code=code)
            api.start()
        if self.fleet_error is not None:
            raise SimulatorError(f"the fleet failed: {self.fleet_error}") from self.fleet_error


def _progress_line(run: _Run, phase: str) -> str:
    fleet, mon = run.fleet, run.monitor
    assert fleet is not None
    assert mon is not None
    s = mon.last()
    stored = "?" if s is None or s.stored is None else str(s.stored)
    up = "".join("U" if w.running else "-" for w in run.workers)
    return (
        f"[chaos] {time.monotonic() - run.t0:7.1f}s {phase:9s} acked {fleet.ledger.readings} "
        f"stored {stored} online {fleet.stats.online}/{fleet.layout.gateways} "
        f"spooled {fleet.spooled_batches()} workers {up} "
        f"influxd {'up' if run.influxd.running else 'DOWN'} "
        f"broker {'up' if run.broker.running else 'DOWN'}"
    )


def _rate(samples: list[_Sample], start: float, end: float, attr: str) -> float:
    """Readings per second between the samples nearest ``start`` and ``end`` that have it."""
    usable = [s for s in samples if getattr(s, attr) is not None]
    if not usable:
        return 0.0
    a = min(usable, key=lambda s: abs(s.t - start))
    b = min(usable, key=lambda s: abs(s.t - end))
    if b.t <= a.t:
        return 0.0
    return float(getattr(b, attr) - getattr(a, attr)) / (b.t - a.t)


def _bookkeeping_check(run: _Run, report: ChaosReport) -> None:
    """Per-gateway seq coverage from ``ingest_batch`` against the ledger."""
    assert run.fleet is not None
    q = (
        f'SELECT count("seq") AS "points", count(distinct("seq")) AS "seqs", '  # noqa: S608
        f'min("seq") AS "lo", max("seq") AS "hi", sum("readings") AS "readings" '
        f'FROM "{BOOKKEEPING}" GROUP BY "gateway"'
    )
    answer = run.influxd.query(q, db=run.config.database)
    rows: dict[str, list[Any]] = {}
    for s in answer["results"][0].get("series", []) or []:
        rows[s["tags"]["gateway"]] = s["values"][0]
    for gw, rec in run.fleet.ledger.gateways().items():
        row = rows.get(gw)
        if row is None:
            report.missing_seqs += rec.acked_batches
            continue
        _t, points, seqs, lo, hi, readings = row
        report.stored_batches += int(seqs)
        report.duplicate_seqs += int(points) - int(seqs)
        report.bookkeeping_readings += int(readings)
        report.missing_seqs += max(rec.acked_batches - int(seqs), 0)
        if rec.acked_batches == rec.batches:  # fully drained: acked seqs are first..last
            report.unknown_seqs += int(lo < rec.first_seq) + int(hi > rec.last_seq)
    hostile = set(run.fleet.hostile_gateway_ids) | {
        gw for gw in rows if gw.startswith(f"{HOSTILE_PREFIX}-")
    }
    for gw in set(rows) - set(run.fleet.ledger.gateways()) - hostile:
        report.unknown_seqs += int(rows[gw][2])


def _repair_times(
    run: _Run, events: list[ChaosEvent], chaos_start: float, report: ChaosReport
) -> None:
    """``repair_s`` per broker_kill: from mosquitto's restart to the last batch the fleet
    published again for a resend request (before the next broker event) being stored: the
    ``received`` time ingest wrote on its bookkeeping point (a later rewrite wins, so this is
    when the refill landed). 0 when no batch had to be resent."""
    fleet = run.fleet
    assert fleet is not None
    broker_events = sorted(
        chaos_start + e.at_s for e in events if e.kind in ("broker_restart", "broker_kill")
    )
    for kill in run.kills:
        until = next((t for t in broker_events if t > kill["t"]), math.inf)
        resent: dict[str, set[int]] = {}
        for at, gw, seqs in fleet.resend_log():
            if kill["t"] <= at < until:
                resent.setdefault(gw, set()).update(seqs)
        last = _last_received(run, resent)
        repair = 0.0 if last is None else max(0.0, last - kill["wall"])
        report.repairs.append({
            "mode": kill["mode"], "restarted_s": round(kill["t"] - run.t0, 1),
            "resent_batches": sum(len(v) for v in resent.values()),
            "repair_s": round(repair, 1),
        })  # fmt: skip
    if report.repairs:
        report.repair_s = max(r["repair_s"] for r in report.repairs)


def _last_received(run: _Run, resent: dict[str, set[int]]) -> float | None:
    """The latest ingest ``received`` time (wall seconds) among these gateways' seqs."""
    last: float | None = None
    for gw, seqs in resent.items():
        ordered = sorted(seqs)
        for i in range(0, len(ordered), 200):
            chunk = " OR ".join(f'"seq" = {s}' for s in ordered[i : i + 200])
            q = (
                f'SELECT max("received") FROM "{BOOKKEEPING}" '  # noqa: S608 - our own ids
                f"WHERE \"gateway\" = '{gw}' AND ({chunk})"
            )
            answer = run.influxd.query(q, db=run.config.database)
            for series in answer["results"][0].get("series", []) or []:
                value = series["values"][0][1]
                if value is not None:
                    t = int(value) / 1e9
                    last = t if last is None else max(last, t)
    return last


def _print(line: str) -> None:
    print(line, flush=True)


def run_chaos(
    config: ChaosConfig, *, say: Callable[[str], None] = _print, progress_every_s: float = 5.0
) -> ChaosReport:
    """Run the whole thing (see the module docstring) and return the verdict.

    Raises :class:`SimulatorError` when a service cannot start or the fleet fails;
    :class:`smartcity.ServiceError` escapes from the local services unchanged.
    """
    events = plan_chaos(config)
    with contextlib.ExitStack() as stack:
        if config.data_dir is None:
            data = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="chaos-")))
        else:
            data = Path(config.data_dir)
            data.mkdir(parents=True, exist_ok=True)
        run = _Run(config, data, say)
        stack.callback(run.close)
        return _execute(run, events, progress_every_s)
    raise AssertionError("unreachable")  # pragma: no cover - ExitStack does not swallow


def _execute(run: _Run, events: list[ChaosEvent], progress_every_s: float) -> ChaosReport:
    cfg = run.config
    say = run.say
    say(
        f"[chaos] plan: {len(events)} events "
        + ", ".join(f"{k} {n}" for k, n in Counter(e.kind for e in events).items())
    )
    for e in events:
        say(f"[chaos]   +{e.at_s:6.1f}s {e.kind:15s} {e.down_s:5.1f}s {e.target}")
    run.start()
    assert run.fleet is not None
    assert run.monitor is not None
    assert run.fleet_thread is not None
    fleet, monitor = run.fleet, run.monitor
    report = ChaosReport(
        gateways=fleet.layout.gateways, seed=cfg.seed, speed=cfg.speed,
        reference_s=cfg.reference_s, chaos_s=cfg.duration_s,
    )  # fmt: skip

    def wait_until(deadline: float, phase: str) -> None:
        next_progress = time.monotonic() + progress_every_s
        while (now := time.monotonic()) < deadline:
            run.supervise()
            if now >= next_progress:
                next_progress = now + progress_every_s
                say(_progress_line(run, phase))
            time.sleep(min(0.1, max(0.0, deadline - now)))

    ref_start = time.monotonic()
    run.note("reference phase", seconds=cfg.reference_s)
    wait_until(ref_start + cfg.reference_s, "reference")
    chaos_start = time.monotonic()
    run.note("chaos phase", seconds=cfg.duration_s, events=len(events))
    # Every start and every end is an action on one timeline; both ends of an event run here.
    actions: list[tuple[float, int, bool, ChaosEvent]] = []
    for i, e in enumerate(events):
        actions += [(e.at_s, i, True, e), (e.end_s, i, False, e)]
    actions.sort(key=lambda a: (a[0], a[2]))
    for at, _i, starting, event in actions:
        wait_until(chaos_start + at, "chaos")
        now = time.monotonic() - chaos_start
        if starting:
            run.begin(event, now)
        else:
            run.end(event)
            event.ended_s = time.monotonic() - chaos_start
    last_fault_end = time.monotonic()
    acked_at_last_fault = fleet.ledger.readings
    run.note("last fault over", acked=acked_at_last_fault)
    wait_until(chaos_start + cfg.duration_s, "quiet")
    chaos_end = time.monotonic()

    # Drain: the fleet stops producing but stays connected (its spools drain, it answers the
    # API's resend requests) until InfluxDB holds everything the broker acknowledged.
    run.note("pausing the fleet (it drains its spools and still answers resend)")
    fleet.pause()
    paused_at = time.monotonic()
    drain_deadline = paused_at + cfg.drain_timeout_s
    next_progress = time.monotonic() + progress_every_s
    drained_at: float | None = None
    while time.monotonic() < drain_deadline:
        run.supervise()
        stored = monitor.stored()
        if fleet.spooled_batches() == 0 and stored is not None and stored >= fleet.ledger.readings:
            drained_at = time.monotonic()
            break
        if time.monotonic() >= next_progress:
            next_progress = time.monotonic() + progress_every_s
            say(_progress_line(run, "drain"))
        time.sleep(0.25)
    run.note("stopping the fleet")
    fleet.stop()
    run.fleet_thread.join(cfg.drain_timeout_s + 60)
    if run.fleet_error is not None:
        raise SimulatorError(f"the fleet failed: {run.fleet_error}") from run.fleet_error
    sent = fleet.ledger.readings
    run.note("fleet stopped", acked=sent, spooled_batches=fleet.spooled_batches())
    monitor.stop()
    time.sleep(1.0)  # let a late rewrite land before counting
    run.note("drained" if drained_at else "drain timed out", stored=monitor.stored())

    totals = fleet.ledger.totals()
    report.created = totals["readings"]
    report.sent = sent
    report.unacked = totals["readings"] - totals["acked_readings"]
    report.acked_batches = totals["acked_batches"]
    report.replays = totals["replays"]
    report.no_subscribers = fleet.stats.no_subscribers
    check = compare_with_influx(fleet.ledger, run.influxd, cfg.database, bookkeeping=BOOKKEEPING)
    report.stored, report.lost, report.extra = check.stored, check.lost, check.extra
    _bookkeeping_check(run, report)
    report.drained = drained_at is not None
    report.final_drain_s = None if drained_at is None else drained_at - paused_at
    caught_up = monitor.first_stored_at_least(acked_at_last_fault, last_fault_end)
    if caught_up is None and drained_at is not None:
        caught_up = drained_at
    report.catch_up_after_last_fault_s = None if caught_up is None else caught_up - last_fault_end
    report.events = dict(Counter(e.kind for e in events if e.ended_s is not None))
    report.unplanned_worker_restarts = run.unplanned
    report.api_restarts = run.api_restarts
    stats = fleet.stats
    report.resend_requests = stats.resend_requests
    report.resend_requeued = stats.resend_requeued
    report.resend_missing = stats.resend_missing
    report.hostile_gateways = cfg.hostile
    report.hostile_cases = fleet.hostile.cases()
    _repair_times(run, events, chaos_start, report)
    samples = monitor.samples
    report.reference_acked_per_s = _rate(samples, ref_start, chaos_start, "acked")
    report.chaos_acked_per_s = _rate(samples, chaos_start, chaos_end, "acked")
    report.reference_stored_per_s = _rate(samples, ref_start, chaos_start, "stored")
    report.chaos_stored_per_s = _rate(samples, chaos_start, chaos_end, "stored")
    report.timeline = run.timeline
    return report
