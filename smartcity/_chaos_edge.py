"""Real edge agents in the chaos run (``ChaosConfig.edge_agents``, ``smartcity sim chaos
--edge-agents N``): the same timeline, broker, ingest and API as the fleet, with gateways
that are real ``python -m edge_agent run`` processes::

    agent-0000 .. agent-<N-1>   (python -m edge_agent run, own process group, YAML config,
        │ simulated input        state dir with its spool; client id edge-agent-NNNN)
        ▼ MQTT v5 QoS 1, spool before publish, delivered batches kept for resend
    mosquitto ◀── GatewayFleet (the simulated gateways, hostile ones among them)
        ▼
    ingest-N ──▶ influxd ◀── api (gap repair asks agents and fleet alike to resend)

    events:  agent_kill   SIGKILL one agent, start it again on the same state dir
                          after ``agent_down_s`` (its waiting batches are replayed)
             broker_kill, broker_restart, worker_kill, influxd_outage   as for the fleet

The agents' ledger is **their own spools**: each agent keeps every delivered batch for
longer than the run (``spool.keep_delivered_s``, within a budget the run never fills), so at
the end its spool holds every batch it ever sealed, with its seq and reading count, and
``meta.next_seq`` says how many it made. That is compared per agent with ingest's
bookkeeping (``ingest_batch``: one point per batch) and with the distinct points InfluxDB
holds for the agent:

- ``missing_seqs``: seqs below ``next_seq`` without a bookkeeping point (a batch lost);
- ``duplicate_seqs``: bookkeeping points beyond the distinct seqs (a batch stored twice);
- ``unknown_seqs``: bookkeeping seqs the agent never made;
- ``lost`` / ``extra``: readings in the spool against distinct points stored (a reading
  lost, or stored under two identities), and the bookkeeping's ``sum(readings)`` against
  both;
- ``dropped_batches`` (the spool's own count of batches it had to drop) and spool rows
  missing below ``next_seq`` make the verdict fail too: the ledger would be incomplete.

Readings an agent read but had not yet committed to its spool when it was SIGKILLed (at
most ``spool.checkpoint_interval_s`` of them) are outside the guarantee by design: a batch
counts from its commit (docs/operations.md, "Chaos run").

At the end, when the fleet pauses, every agent is stopped with SIGTERM (it seals and commits
what it holds) and started again on the same state dir **without inputs**: it produces
nothing more, still replays what is waiting and answers the API's resend requests until
everything is stored. Agents that exit on their own are restarted, as systemd would, and
counted as service crashes (``ChaosReport.agent_restarts``).
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from smartcity._chaos_plan import ChaosConfig, ChaosEvent, agent_id
from smartcity._chaos_procs import ChildProcess
from smartcity._chaos_report import BOOKKEEPING, ChaosReport
from smartcity._chaos_run import _Run
from smartcity._localstack import Influxd, Mosquitto, ServiceError

__all__ = ["AGENT_MEASUREMENT", "AgentProcess", "EdgeAgents", "EdgeRun", "SpoolLedger",
           "agent_config", "read_spool"]  # fmt: skip

#: What the agents' simulated input measures (one field, ``value``).
AGENT_MEASUREMENT: Final = "ChaosAgentReading"


def agent_config(
    config: ChaosConfig, gateway: str, broker: Mosquitto, state_dir: Path,
    *, producing: bool = True, keep_s: float = 7 * 86400,
) -> dict[str, Any]:  # fmt: skip
    """An agent's YAML config: the run's broker, a simulated input (none once the run
    pauses), every delivered batch kept ``keep_s`` for resend and for the ledger."""
    inputs = [{
        "type": "simulated", "name": "sim", "devices": config.agent_devices,
        "device_prefix": "dev", "measurement": AGENT_MEASUREMENT, "fields": ["value"],
        "rate_hz": config.agent_rate_hz,
    }] if producing else []  # fmt: skip
    return {
        "gateway": {"id": gateway, "state_dir": str(state_dir)},
        "broker": {"host": broker.host, "port": broker.port, "topic_root": config.topic_root,
                   "backoff_initial_s": 0.2, "backoff_max_s": 2.0,
                   "connect_timeout_s": 5.0},
        "spool": {"synchronous": "normal", "keep_delivered_s": keep_s,
                  "budget_bytes": "512MiB"},
        "batch": {"max_readings": 500, "max_age_s": 1.0},
        "health": {"interval_s": 10},
        "metrics": {"port": None},
        "inputs": inputs,
    }  # fmt: skip


class AgentProcess(ChildProcess):
    """One edge agent (``python -m edge_agent run``) and its config file."""

    def __init__(self, gateway: str, directory: Path) -> None:
        self.gateway = gateway
        self.directory = directory
        self.state_dir = directory / "state"
        self.config_path = directory / "edge.yaml"
        super().__init__(
            [sys.executable, "-m", "edge_agent", "run", "--config", str(self.config_path),
             "--log-format", "json"],
            directory / "agent.log",
        )  # fmt: skip
        #: Down on purpose (killed by the schedule, or being restarted): not supervised.
        self.held_down = False

    def write_config(self, cfg: dict[str, Any]) -> None:
        self.config_path.write_text(json.dumps(cfg))  # JSON is YAML

    @property
    def spool_path(self) -> Path:
        return self.state_dir / "spool.sqlite3"


@dataclass(slots=True)
class SpoolLedger:
    """What one agent's spool says it made: ``next_seq`` batches, these rows still held."""

    next_seq: int = 0
    dropped_batches: int = 0
    #: seq -> (readings, delivered)
    batches: dict[int, tuple[int, bool]] = field(default_factory=dict)

    @property
    def waiting(self) -> int:
        return sum(1 for _r, delivered in self.batches.values() if not delivered)


def read_spool(path: Path) -> SpoolLedger:
    """Read an agent's spool (read only; safe while the agent runs: SQLite WAL)."""
    ledger = SpoolLedger()
    if not path.exists():
        return ledger
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        ledger.next_seq = int(meta.get("next_seq", 0))
        ledger.dropped_batches = int(meta.get("dropped_batches", 0))
        for seq, readings, delivered in db.execute(
            "SELECT seq, readings, delivered_ns IS NOT NULL FROM batches"
        ):
            ledger.batches[int(seq)] = (int(readings), bool(delivered))
    finally:
        db.close()
    return ledger


class EdgeAgents:
    """The run's agents: started, killed, restarted, paused, and their ledger checked."""

    def __init__(self, config: ChaosConfig, data: Path, broker: Mosquitto,
                 note: Callable[..., None]) -> None:  # fmt: skip
        self.config = config
        self.broker = broker
        self.note = note
        self.agents = {
            agent_id(n): AgentProcess(agent_id(n), data / "agents" / agent_id(n))
            for n in range(config.edge_agents)
        }
        self.kills = 0
        self.restarts = 0  # exited on their own
        self.paused = False
        # Delivered batches outlive the run: the spool is the ledger.
        run_s = config.reference_s + config.duration_s + config.drain_timeout_s
        self.keep_s = min(7 * 86400.0, run_s + 3600.0)

    def _configure(self, agent: AgentProcess) -> None:
        agent.write_config(agent_config(self.config, agent.gateway, self.broker,
                                        agent.state_dir, producing=not self.paused,
                                        keep_s=self.keep_s))  # fmt: skip

    def start(self) -> None:
        for agent in self.agents.values():
            agent.state_dir.mkdir(parents=True, exist_ok=True)
            self._configure(agent)
            agent.start()
        self.note("edge agents started", agents=len(self.agents),
                  readings_per_s=len(self.agents) * self.config.agent_devices
                  * self.config.agent_rate_hz)  # fmt: skip

    def kill(self, gateway: str) -> None:
        agent = self.agents[gateway]
        agent.held_down = True
        agent.kill()
        self.kills += 1

    def restart(self, gateway: str) -> None:
        agent = self.agents[gateway]
        if not agent.running:
            self._configure(agent)
            agent.start()
        agent.held_down = False

    def supervise(self) -> None:
        """Restart agents that exited on their own (systemd ``Restart=always``), counted."""
        for agent in self.agents.values():
            if not agent.held_down and not agent.running and agent.proc is not None:
                self.restarts += 1
                self.note("edge agent exited, restarting", gateway=agent.gateway,
                          code=agent.proc.returncode)  # fmt: skip
                self.restart(agent.gateway)

    def pause(self) -> None:
        """SIGTERM each agent (it commits what it holds), start it again without inputs."""
        self.paused = True
        for agent in self.agents.values():
            agent.held_down = True
            agent.terminate()
            if agent.proc is not None and agent.proc.returncode not in (0, None):
                self.restarts += 1
                self.note("edge agent exited badly on SIGTERM", gateway=agent.gateway,
                          code=agent.proc.returncode)  # fmt: skip
            self.restart(agent.gateway)
        self.note("edge agents restarted without inputs (they drain and answer resend)")

    def stop(self) -> None:
        for agent in self.agents.values():
            agent.held_down = True
            agent.terminate()

    def status(self) -> str:
        return "agents " + "".join("U" if a.running else "-" for a in self.agents.values())

    def drained(self, influxd: Influxd, database: str) -> bool:
        """Nothing waits in any spool and InfluxDB holds every seq each agent made."""
        try:
            made = {gw: read_spool(a.spool_path) for gw, a in self.agents.items()}
            if any(spool.waiting for spool in made.values()):
                return False
            q = ";".join(
                f'SELECT count(distinct("seq")) FROM "{BOOKKEEPING}" '  # noqa: S608 - our ids
                f'WHERE "gateway" = \'{gw}\' AND "seq" < {spool.next_seq}'
                for gw, spool in made.items()
            )
            results = influxd.query(q, db=database)["results"]
        except (ServiceError, OSError, sqlite3.Error):
            return False
        for spool, result in zip(made.values(), results, strict=True):
            series = result.get("series") or []
            if (int(series[0]["values"][0][1]) if series else 0) < spool.next_seq:
                return False
        return True

    def verdict(self, influxd: Influxd, database: str) -> dict[str, Any]:
        """Each agent's spool against InfluxDB (see the module docstring); agents stopped."""
        per: dict[str, dict[str, Any]] = {}
        for gw, agent in self.agents.items():
            per[gw] = self._check(gw, read_spool(agent.spool_path), influxd, database)
        keys = ("batches", "spooled_readings", "stored", "bookkeeping_readings", "lost",
                "extra", "missing_seqs", "duplicate_seqs", "unknown_seqs", "dropped_batches",
                "spool_rows_missing", "waiting")  # fmt: skip
        total: dict[str, Any] = {k: sum(v[k] for v in per.values()) for k in keys}
        total["duplicated"] = total["extra"] + total["duplicate_seqs"]
        total["agents"] = len(self.agents)
        total["agent_kills"] = self.kills
        total["agent_restarts"] = self.restarts
        total["ok"] = all(v["ok"] for v in per.values())
        total["gateways"] = per
        return total

    @staticmethod
    def _check(gw: str, spool: SpoolLedger, influxd: Influxd, database: str) -> dict[str, Any]:
        q = (
            f'SELECT "seq", "readings" FROM "{BOOKKEEPING}" '  # noqa: S608 - our own ids
            f"WHERE \"gateway\" = '{gw}'"
        )
        points: list[tuple[int, int]] = []
        for s in influxd.query(q, db=database)["results"][0].get("series", []) or []:
            points += [(int(v[1]), int(v[2])) for v in s["values"]]
        seqs = {seq for seq, _ in points}
        q = (
            f'SELECT count("value") FROM "{AGENT_MEASUREMENT}" '  # noqa: S608
            f"WHERE \"gateway\" = '{gw}'"
        )
        series = influxd.query(q, db=database)["results"][0].get("series", []) or []
        stored = int(series[0]["values"][0][1]) if series else 0
        made = set(range(spool.next_seq))
        spooled = sum(r for r, _d in spool.batches.values())
        one = {
            "batches": spool.next_seq,
            "spooled_readings": spooled,
            "stored": stored,
            "bookkeeping_readings": sum(r for _s, r in points),
            "lost": max(spooled - stored, 0),
            "extra": max(stored - spooled, 0),
            "missing_seqs": len(made - seqs),
            "duplicate_seqs": len(points) - len(seqs),
            "unknown_seqs": len(seqs - made),
            "dropped_batches": spool.dropped_batches,
            "spool_rows_missing": len(made - set(spool.batches)),
            "waiting": spool.waiting,
        }
        must_be_zero = ("lost", "extra", "missing_seqs", "duplicate_seqs", "unknown_seqs",
                        "dropped_batches", "spool_rows_missing")  # fmt: skip
        one["ok"] = (
            spool.next_seq > 0
            and all(one[k] == 0 for k in must_be_zero)
            and one["bookkeeping_readings"] == spooled == stored
        )
        return one


class EdgeRun(_Run):
    """The single-node chaos run with real edge agents beside the fleet."""

    def _setup(self) -> None:
        super()._setup()
        self.edge = EdgeAgents(self.config, self.data, self.broker, self.note)

    def start(self) -> None:
        super().start()
        self.edge.start()

    def status(self) -> str:
        return f"{super().status()} {self.edge.status()}"

    def begin(self, event: ChaosEvent, now: float) -> None:
        if event.kind != "agent_kill":
            super().begin(event, now)
            return
        event.started_s = now
        self.edge.kill(event.target)
        self.note("SIGKILL", agent=event.target, down_s=event.down_s)

    def end(self, event: ChaosEvent) -> None:
        if event.kind != "agent_kill":
            super().end(event)
            return
        self.edge.restart(event.target)
        self.note("restarted", agent=event.target)

    def supervise(self) -> None:
        super().supervise()
        self.edge.supervise()

    def pause(self) -> None:
        super().pause()
        self.edge.pause()

    def drained(self) -> bool:
        return self.edge.drained(self.influxd, self.config.database)

    def finish(self, report: ChaosReport) -> None:
        self.edge.stop()
        time.sleep(0.5)  # a last rewrite from a replay lands before counting
        report.edge_agents = self.edge.verdict(self.influxd, self.config.database)
        report.agent_restarts = self.edge.restarts
        e = report.edge_agents
        self.note("edge agents checked", spooled=e["spooled_readings"], stored=e["stored"],
                  lost=e["lost"], duplicated=e["duplicated"], missing_seqs=e["missing_seqs"],
                  ok=e["ok"])  # fmt: skip

    def close(self) -> None:
        self.edge.stop()
        super().close()
