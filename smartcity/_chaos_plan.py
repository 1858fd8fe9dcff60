"""The chaos run's schedule: what fails, when and for how long, drawn from a seed.

:func:`plan_chaos` places at least one event of each kind, then more at random gaps; events on
different components overlap, two events never hit the same component at once, and all end
before the quiet tail. :func:`scaled_scenario` sizes the fleet's scenario to the run. No I/O.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from simulators import FaultSpec, GatewayProfile, HostileCase, Scenario, load_scenario

__all__ = [
    "AGENT_PREFIX",
    "CHAOS_KINDS",
    "CLUSTER_KINDS",
    "HOSTILE_PREFIX",
    "NODE_KILL_TARGETS",
    "ChaosConfig",
    "ChaosEvent",
    "ChaosKind",
    "NodeKillTarget",
    "agent_id",
    "plan_chaos",
    "scaled_scenario",
    "sim_start_ns",
]

ChaosKind = Literal[
    "worker_kill",
    "influxd_outage",
    "broker_restart",
    "broker_kill",
    "uplink_loss",
    "reboot",
    "node_kill",
    "cluster_restart",
    "replica_kill",
    "agent_kill",
]
#: The single-node profile's events (mosquitto, one influxd).
CHAOS_KINDS: Final[tuple[ChaosKind, ...]] = (
    "influxd_outage",
    "broker_restart",
    "broker_kill",
    "worker_kill",
    "uplink_loss",
    "reboot",
)
#: The cluster profile's events (``ChaosConfig.cluster``: NATS nodes, InfluxDB replicas).
CLUSTER_KINDS: Final[tuple[ChaosKind, ...]] = (
    "node_kill",
    "cluster_restart",
    "replica_kill",
    "worker_kill",
    "uplink_loss",
    "reboot",
)
#: Which node a ``node_kill`` hits, found when it begins from the nodes' ``/jsz``: the
#: leader of ``$MQTT_msgs``, the JetStream meta leader, or a node leading neither.
NodeKillTarget = Literal["stream leader", "meta leader", "follower"]
NODE_KILL_TARGETS: Final[tuple[NodeKillTarget, ...]] = ("stream leader", "meta leader", "follower")
#: Gateway id prefix of the hostile gateways (never an honest profile's prefix).
HOSTILE_PREFIX: Final = "hostile"
#: Gateway id prefix of the real edge agents (``ChaosConfig.edge_agents``, _chaos_edge.py).
AGENT_PREFIX: Final = "agent"
_WEEK_S: Final = 7 * 86_400
_BROKER_KILL_MODES: Final = ("after autosave", "before autosave")
_CLUSTER_RESTART_MODES: Final = ("SIGKILL all", "SIGTERM all")


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
    #: Real edge agents (``python -m edge_agent run``, simulated inputs, own spool and state
    #: dirs) beside the fleet, with their own ledger (smartcity/_chaos_edge.py); each makes
    #: ``agent_devices`` x ``agent_rate_hz`` readings a second. They add ``agent_kill``
    #: (SIGKILL one agent, restart it on the same state dir) to the schedule.
    edge_agents: int = 0
    agent_devices: int = 10
    agent_rate_hz: float = 2.0
    agent_down_s: tuple[float, float] = (2.0, 8.0)
    #: The kinds of event the schedule draws from (each at least once); ``None``: every kind
    #: of the profile (:data:`CHAOS_KINDS`, or :data:`CLUSTER_KINDS` with ``cluster``).
    kinds: tuple[ChaosKind, ...] | None = None
    #: After one event of each kind, more at random gaps (off: exactly one of each).
    extra_events: bool = True
    #: The cluster profile (docs/cluster.md): ``nodes`` NATS JetStream nodes with MQTT
    #: (3.1.1) instead of mosquitto, and ``replicas`` InfluxDB replicas each fed by its own
    #: group of ``workers`` ingest workers (source ``jetstream``, its own durable consumer).
    #: No API (gap repair): a PUBACK there means stored on a quorum.
    cluster: bool = False
    nodes: int = 3
    replicas: int = 2
    #: A node_kill's target, in turn (the first node_kill takes the first, and so on).
    node_kill_targets: tuple[NodeKillTarget, ...] = NODE_KILL_TARGETS
    node_down_s: tuple[float, float] = (2.0, 8.0)
    cluster_down_s: tuple[float, float] = (1.0, 5.0)
    replica_down_s: tuple[float, float] = (10.0, 30.0)
    #: The ingest consumers' AckWait (s): a SIGKILLed worker's messages go to the others
    #: this long after their delivery.
    ack_wait_s: float = 10.0
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
        allowed = CLUSTER_KINDS if self.cluster else CHAOS_KINDS
        if self.edge_agents < 0:
            raise ValueError("edge_agents must be >= 0")
        if self.edge_agents:
            if self.cluster:
                raise ValueError("edge agents are not run in the cluster profile (yet)")
            allowed = (*allowed, "agent_kill")
        if not set(self.event_kinds) <= set(allowed):
            profile = "the cluster profile" if self.cluster else "the single-node profile"
            raise ValueError(f"kinds of {profile} must be among {', '.join(allowed)}")
        if self.cluster:
            if self.nodes < 3 or self.nodes % 2 == 0:
                raise ValueError("nodes must be odd and at least 3 (a quorum survives one)")
            if self.replicas < 1:
                raise ValueError("replicas must be at least 1")
            if self.hostile:
                raise ValueError("hostile gateways are not run in the cluster profile (yet)")
            if not self.node_kill_targets or not set(self.node_kill_targets) <= set(
                NODE_KILL_TARGETS
            ):
                raise ValueError(f"node_kill_targets must be among {', '.join(NODE_KILL_TARGETS)}")
            if not 5 <= self.ack_wait_s <= 3600:
                raise ValueError("ack_wait_s must be within 5..3600")
        if self.speed <= 0:
            raise ValueError("speed must be > 0: gateway faults last simulated seconds")
        longest = max((self.down_range(k)[1] for k in self.event_kinds), default=0.0)
        if self.duration_s - self.quiet_s < longest + 1:
            raise ValueError(f"duration_s - quiet_s must exceed the longest event ({longest:g} s)")

    @property
    def event_kinds(self) -> tuple[ChaosKind, ...]:
        """The kinds the schedule draws from: ``kinds``, else every kind of the profile."""
        if self.kinds is not None:
            return self.kinds
        if self.edge_agents:
            return (*CHAOS_KINDS, "agent_kill")
        return CLUSTER_KINDS if self.cluster else CHAOS_KINDS

    def down_range(self, kind: ChaosKind) -> tuple[float, float]:
        """How long an event of ``kind`` lasts, (shortest, longest) in wall seconds."""
        return {
            "worker_kill": self.worker_down_s,
            "influxd_outage": self.influxd_down_s,
            "broker_restart": self.broker_down_s,
            "broker_kill": self.broker_down_s,
            "uplink_loss": self.gateway_fault_s,
            "reboot": self.gateway_fault_s,
            "node_kill": self.node_down_s,
            "cluster_restart": self.cluster_down_s,
            "replica_kill": self.replica_down_s,
            "agent_kill": self.agent_down_s,
        }[kind]


@dataclass(slots=True)
class ChaosEvent:
    """One planned fault and, once run, when it really started and ended."""

    kind: ChaosKind
    #: Planned start and length, wall seconds from the start of the chaos phase.
    at_s: float
    down_s: float
    #: ``ingest-N`` for worker_kill, gateways hit for gateway faults, the node (a
    #: :data:`NODE_KILL_TARGETS` entry) for node_kill, the signal for cluster_restart,
    #: ``influx-N`` for replica_kill, the agent's gateway id for agent_kill.
    target: str = ""
    started_s: float | None = None
    ended_s: float | None = None

    @property
    def end_s(self) -> float:
        return self.at_s + self.down_s


def plan_chaos(config: ChaosConfig) -> list[ChaosEvent]:
    """The seeded schedule: one event of each kind, then more at random gaps.

    Two events on the same component (influxd, the broker, one worker) never overlap, so each
    stop has its start; events on different components overlap freely. Every event ends by
    ``duration_s - quiet_s``. In the cluster profile the NATS cluster is one component (a
    node_kill and a cluster_restart never overlap, so a quorum stays but for the restart),
    each InfluxDB replica and each worker (``ingest-<replica>-<n>``) another.
    """
    rng = random.Random(config.seed)
    horizon = config.duration_s - config.quiet_s
    busy: dict[str, list[tuple[float, float]]] = {}
    events: list[ChaosEvent] = []
    ranges = {kind: config.down_range(kind)
              for kind in (*CHAOS_KINDS, *CLUSTER_KINDS, "agent_kill")}  # fmt: skip
    node_targets = itertools.cycle(config.node_kill_targets)
    n_hit = max(1, round(config.gateway_fraction * config.gateways))

    def place(kind: ChaosKind, at: float) -> bool:
        low, high = ranges[kind]
        down = rng.uniform(low, high)
        if at + down > horizon:
            return False
        if kind == "worker_kill" and config.cluster:
            replica, n = rng.randrange(config.replicas), rng.randrange(config.workers)
            resource = target = f"ingest-{replica}-{n}"
        elif kind == "worker_kill":
            resource = target = f"ingest-{rng.randrange(config.workers)}"
        elif kind in ("node_kill", "cluster_restart"):
            resource = "nats"
            target = rng.choice(_CLUSTER_RESTART_MODES) if kind == "cluster_restart" else "next"
        elif kind == "replica_kill":
            resource = target = f"influx-{rng.randrange(config.replicas)}"
        elif kind == "agent_kill":
            resource = target = agent_id(rng.randrange(max(1, config.edge_agents)))
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
        if target == "next":  # node_kill: targets in turn, in the order they happen
            target = ""
        events.append(ChaosEvent(kind=kind, at_s=round(at, 2), down_s=round(down, 2),
                                 target=target))  # fmt: skip
        return True

    for kind in config.event_kinds:
        for _ in range(200):
            if place(kind, rng.uniform(0, horizon - ranges[kind][1])):
                break
        else:
            raise ValueError(f"no room for a {kind} event; lengthen duration_s")
    at = 0.0
    kinds = list(config.event_kinds) if config.extra_events else []
    while kinds:
        at += rng.uniform(*config.gap_s)
        if at >= horizon:
            break
        place(rng.choice(kinds), at)
    events.sort(key=lambda e: e.at_s)
    for e in events:
        if e.kind == "node_kill":
            e.target = next(node_targets)
    return events


def agent_id(n: int) -> str:
    """The gateway id of the run's ``n``-th real edge agent."""
    return f"{AGENT_PREFIX}-{n:04d}"


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
    if config.edge_agents and any(p.prefix == AGENT_PREFIX for p in profiles):
        raise ValueError(f"the scenario already has an {AGENT_PREFIX!r} profile")
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


def sim_start_ns(scenario: Scenario, config: ChaosConfig, now_ns: int) -> int:
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
