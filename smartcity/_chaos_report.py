"""The chaos run's verdict: the fleet's ledger against InfluxDB, the throughput it kept,
and how long repair and catch-up took.

:class:`ChaosReport` is the outcome; :class:`Monitor` samples (acknowledged, stored) once a
second during the run; the checks below read InfluxDB at the end: distinct points against the
ledger (``lost``, ``extra``) and, per gateway, ingest's bookkeeping points (``ingest_batch``:
one per batch, so a seq stored twice is a duplicate and one missing is a loss).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from simulators import GatewayFleet, compare_with_influx
from smartcity._chaos_plan import AGENT_PREFIX, HOSTILE_PREFIX, ChaosEvent
from smartcity._localstack import Influxd, ServiceError
from telemetry import BOOKKEEPING_MEASUREMENT

__all__ = [
    "BOOKKEEPING",
    "ChaosReport",
    "Monitor",
    "Sample",
    "bookkeeping_check",
    "check_stores",
    "rate",
    "repair_times",
]

BOOKKEEPING: Final = BOOKKEEPING_MEASUREMENT
_POLL_S: Final = 1.0


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
    #: The cluster profile: per InfluxDB replica, its own verdict (``stored``, ``lost``,
    #: ``duplicates``, ``missing_seqs``, ... ``ok``) and ``catch_up_after_last_fault_s``;
    #: the fields above are the worst replica's. Empty with one InfluxDB.
    replicas: list[dict[str, Any]] = field(default_factory=list)
    #: The real edge agents (``ChaosConfig.edge_agents``): their spools' ledger against
    #: InfluxDB (``spooled_readings``, ``stored``, ``lost``, ``duplicated``, ``missing_seqs``,
    #: ... ``ok``; ``gateways``: per agent). Empty without agents.
    edge_agents: dict[str, Any] = field(default_factory=dict)
    #: Edge agents that exited on their own and were restarted (the schedule's kills aside).
    agent_restarts: int = 0
    timeline: list[dict[str, Any]] = field(default_factory=list)

    @property
    def duplicates(self) -> int:
        return self.extra + self.duplicate_seqs

    @property
    def service_crashes(self) -> int:
        """Ingest workers, API processes and edge agents that exited on their own (not the
        schedule's kills)."""
        return self.unplanned_worker_restarts + self.api_restarts + self.agent_restarts

    @property
    def ok(self) -> bool:
        return (
            self.drained
            and self.lost == 0
            and self.duplicates == 0
            and self.missing_seqs == 0
            and self.unknown_seqs == 0
            and self.bookkeeping_readings == self.stored
            and all(r["ok"] for r in self.replicas)
            and bool(self.edge_agents.get("ok", True))
        )

    @property
    def verdict_ok(self) -> bool:
        """This report's own counts (one store) say nothing lost or doubled."""
        return (
            self.lost == 0
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
        data["by_kind"] = self.by_kind()
        ref, chaos = self.reference_stored_per_s, self.chaos_stored_per_s
        data["stored_throughput_ratio"] = round(chaos / ref, 3) if ref else None
        ref_a, chaos_a = self.reference_acked_per_s, self.chaos_acked_per_s
        data["acked_throughput_ratio"] = round(chaos_a / ref_a, 3) if ref_a else None
        for key in (
            "reference_acked_per_s",
            "chaos_acked_per_s",
            "reference_stored_per_s",
            "chaos_stored_per_s",
            "catch_up_after_last_fault_s",
            "final_drain_s",
            "repair_s",
        ):
            if data[key] is not None:
                data[key] = round(data[key], 1)
        return data

    def by_kind(self) -> dict[str, dict[str, Any]]:
        """The honest verdict per kind of gateway: the simulated fleet, the real edge agents."""
        kinds: dict[str, dict[str, Any]] = {
            "fleet": {
                "gateways": self.gateways, "acked_readings": self.sent, "stored": self.stored,
                "lost": self.lost, "duplicated": self.duplicates,
                "missing_seqs": self.missing_seqs, "ok": self.verdict_ok,
            },
        }  # fmt: skip
        if self.edge_agents:
            kinds["edge_agents"] = {k: v for k, v in self.edge_agents.items() if k != "gateways"}
        return kinds


@dataclass(slots=True)
class Sample:
    t: float
    acked: int
    #: The least any store holds (``None`` while one does not answer), and each store's.
    stored: int | None
    per_store: tuple[int | None, ...] = ()


class Monitor(threading.Thread):
    """Samples (time, readings acknowledged to the fleet, readings stored) once a second.

    Stored readings are ``sum(readings)`` of the honest simulated gateways' bookkeeping points
    (one per batch: cheap to sum, and a replay overwrites its point; the real edge agents
    have their own ledger); ``None`` while influxd does not
    answer. With several stores (InfluxDB replicas) ``stored`` is the least of them, so
    "caught up" means every replica caught up. A thread of its own, so a query hanging on a
    stopping influxd never delays the schedule.
    """

    def __init__(self, stores: Sequence[Influxd], database: str, fleet: GatewayFleet) -> None:
        super().__init__(name="chaos.monitor", daemon=True)
        self.stores = list(stores)
        self.database = database
        self.fleet = fleet
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def stored(self) -> int | None:
        """The least any store holds now (``None`` while one does not answer)."""
        per = [self.stored_in(store) for store in self.stores]
        return None if None in per else min(p for p in per if p is not None)

    def stored_in(self, influxd: Influxd) -> int | None:
        try:
            answer = influxd.query(
                f'SELECT sum("readings") FROM "{BOOKKEEPING}" '  # noqa: S608
                f'WHERE "gateway" !~ /^({HOSTILE_PREFIX}|{AGENT_PREFIX})-/',
                db=self.database,
            )
        except (ServiceError, OSError):
            return None
        series = answer["results"][0].get("series")
        return int(series[0]["values"][0][1]) if series else 0

    def run(self) -> None:
        while not self._stop.is_set():
            acked = self.fleet.ledger.readings
            per = tuple(self.stored_in(store) for store in self.stores)
            stored = None if None in per else min(p for p in per if p is not None)
            with self._lock:
                self.samples.append(Sample(time.monotonic(), acked, stored, per))
            self._stop.wait(_POLL_S)

    def last(self) -> Sample | None:
        with self._lock:
            return self.samples[-1] if self.samples else None

    def first_stored_at_least(
        self, target: int, after: float, *, replica: int | None = None
    ) -> float | None:
        """When every store (or store ``replica``) first held ``target`` after ``after``."""
        with self._lock:
            for s in self.samples:
                value = s.stored if replica is None else s.per_store[replica]
                if s.t >= after and value is not None and value >= target:
                    return s.t
        return None

    def stop(self) -> None:
        self._stop.set()


def rate(samples: list[Sample], start: float, end: float, attr: str) -> float:
    """Readings per second between the samples nearest ``start`` and ``end`` that have it."""
    usable = [s for s in samples if getattr(s, attr) is not None]
    if not usable:
        return 0.0
    a = min(usable, key=lambda s: abs(s.t - start))
    b = min(usable, key=lambda s: abs(s.t - end))
    if b.t <= a.t:
        return 0.0
    return float(getattr(b, attr) - getattr(a, attr)) / (b.t - a.t)


def check_stores(
    stores: Sequence[Influxd], database: str, fleet: GatewayFleet, report: ChaosReport
) -> None:
    """The ledger against every store: distinct points (``lost``, ``extra``) and the
    per-gateway bookkeeping. One store fills ``report``; several (replicas) each get their
    entry in ``report.replicas``, and ``report`` takes the worst one's counts."""
    verdicts: list[ChaosReport] = []
    for store in stores:
        one = ChaosReport(gateways=report.gateways, seed=report.seed, speed=report.speed,
                          reference_s=report.reference_s, chaos_s=report.chaos_s)  # fmt: skip
        check = compare_with_influx(fleet.ledger, store, database, bookkeeping=BOOKKEEPING)
        one.stored, one.lost, one.extra = check.stored, check.lost, check.extra
        bookkeeping_check(store, database, fleet, one)
        verdicts.append(one)

    def badness(r: ChaosReport) -> int:
        return r.lost + r.duplicates + r.missing_seqs + r.unknown_seqs

    worst = max(verdicts, key=badness)  # the first on a tie
    for key in ("stored", "lost", "extra", "stored_batches", "missing_seqs", "duplicate_seqs",
                "unknown_seqs", "bookkeeping_readings"):  # fmt: skip
        setattr(report, key, getattr(worst, key))
    if len(stores) > 1:
        report.replicas = [
            {"replica": i, "url": store.url, "stored": r.stored, "lost": r.lost,
             "duplicates": r.duplicates, "stored_batches": r.stored_batches,
             "missing_seqs": r.missing_seqs, "duplicate_seqs": r.duplicate_seqs,
             "unknown_seqs": r.unknown_seqs, "bookkeeping_readings": r.bookkeeping_readings,
             "ok": r.verdict_ok}
            for i, (store, r) in enumerate(zip(stores, verdicts, strict=True))
        ]  # fmt: skip


def bookkeeping_check(
    influxd: Influxd, database: str, fleet: GatewayFleet, report: ChaosReport
) -> None:
    """Per-gateway seq coverage from ``ingest_batch`` against the ledger."""
    q = (
        f'SELECT count("seq") AS "points", count(distinct("seq")) AS "seqs", '  # noqa: S608
        f'min("seq") AS "lo", max("seq") AS "hi", sum("readings") AS "readings" '
        f'FROM "{BOOKKEEPING}" GROUP BY "gateway"'
    )
    answer = influxd.query(q, db=database)
    rows: dict[str, list[Any]] = {}
    for s in answer["results"][0].get("series", []) or []:
        rows[s["tags"]["gateway"]] = s["values"][0]
    for gw, rec in fleet.ledger.gateways().items():
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
    hostile = set(fleet.hostile_gateway_ids) | {  # the edge agents have their own ledger
        gw for gw in rows if gw.startswith((f"{HOSTILE_PREFIX}-", f"{AGENT_PREFIX}-"))
    }
    for gw in set(rows) - set(fleet.ledger.gateways()) - hostile:
        report.unknown_seqs += int(rows[gw][2])


def repair_times(
    influxd: Influxd,
    database: str,
    fleet: GatewayFleet,
    *,
    kills: list[dict[str, Any]],
    t0: float,
    events: list[ChaosEvent],
    chaos_start: float,
    report: ChaosReport,
) -> None:
    """``repair_s`` per broker_kill: from mosquitto's restart to the last batch the fleet
    published again for a resend request (before the next broker event) being stored: the
    ``received`` time ingest wrote on its bookkeeping point (a later rewrite wins, so this is
    when the refill landed). 0 when no batch had to be resent. ``kills``: per broker_kill,
    mosquitto's restart (``t`` monotonic, ``wall``) and the ``mode``; ``t0`` the run's start."""
    broker_events = sorted(
        chaos_start + e.at_s for e in events if e.kind in ("broker_restart", "broker_kill")
    )
    for kill in kills:
        until = next((t for t in broker_events if t > kill["t"]), math.inf)
        resent: dict[str, set[int]] = {}
        for at, gw, seqs in fleet.resend_log():
            if kill["t"] <= at < until:
                resent.setdefault(gw, set()).update(seqs)
        last = _last_received(influxd, database, resent)
        repair = 0.0 if last is None else max(0.0, last - kill["wall"])
        report.repairs.append({
            "mode": kill["mode"], "restarted_s": round(kill["t"] - t0, 1),
            "resent_batches": sum(len(v) for v in resent.values()),
            "repair_s": round(repair, 1),
        })  # fmt: skip
    if report.repairs:
        report.repair_s = max(r["repair_s"] for r in report.repairs)


def _last_received(influxd: Influxd, database: str, resent: dict[str, set[int]]) -> float | None:
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
            answer = influxd.query(q, db=database)
            for series in answer["results"][0].get("series", []) or []:
                value = series["values"][0][1]
                if value is not None:
                    t = int(value) / 1e9
                    last = t if last is None else max(last, t)
    return last
