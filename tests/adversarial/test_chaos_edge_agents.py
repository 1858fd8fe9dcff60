"""Real edge agents in the chaos run, beside the simulated fleet and hostile gateways
(``smartcity sim chaos --edge-agents N``, smartcity/_chaos_edge.py): through a broker
SIGKILL and an agent SIGKILL, each agent's spool (every batch it ever sealed, kept for the
run) must equal what InfluxDB stores, as must the fleet's ledger, with no service crash.

The ledger check itself is shown to fail on a spool and a database that disagree (a batch
missing, one stored twice, a reading under two identities), so a run that passes says
something.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from edge_agent._spool import Spool
from simulators import HOSTILE_CASES
from smartcity._chaos import ChaosConfig, plan_chaos, run_chaos
from smartcity._chaos_edge import AGENT_MEASUREMENT, EdgeAgents, read_spool
from smartcity._chaos_report import BOOKKEEPING
from smartcity._localstack import Influxd, Mosquitto

#: 20 fleet gateways, 2 hostile ones (every hostile case) and 4 real agents; exactly one
#: broker SIGKILL, one agent SIGKILL and one ingest worker SIGKILL (no other fault), 35 s of
#: chaos with a 15 s quiet tail: ~1 minute in all. (The hostile gateways' own run beside the
#: fleet alone was folded into this one: one run, every case, both kinds of honest gateway.)
EDGE = ChaosConfig(
    gateways=20,
    hostile=2,
    edge_agents=4,
    agent_devices=5,
    agent_rate_hz=4.0,
    speed=30.0,
    seed=3,
    reference_s=5.0,
    duration_s=35.0,
    quiet_s=15.0,
    kinds=("broker_kill", "agent_kill", "worker_kill"),
    extra_events=False,
    broker_down_s=(1.0, 2.0),
    agent_down_s=(2.0, 4.0),
    drain_timeout_s=90.0,
)


def test_the_schedule_has_one_broker_kill_and_one_agent_kill_on_an_agent() -> None:
    events = plan_chaos(EDGE)
    assert sorted(e.kind for e in events) == ["agent_kill", "broker_kill", "worker_kill"]
    kill = next(e for e in events if e.kind == "agent_kill")
    assert kill.target in {f"agent-{n:04d}" for n in range(EDGE.edge_agents)}
    assert "agent_kill" in ChaosConfig(edge_agents=2).event_kinds
    assert "agent_kill" not in ChaosConfig().event_kinds
    with pytest.raises(ValueError, match="must be among"):
        ChaosConfig(kinds=("agent_kill",))  # no agents to kill
    with pytest.raises(ValueError, match="cluster"):
        ChaosConfig(edge_agents=2, cluster=True)


@pytest.mark.integration
@pytest.mark.slow
def test_real_agents_fleet_and_hostile_gateways_through_broker_agent_and_worker_sigkills(
    tmp_path: Path,
) -> None:
    lines: list[str] = []
    report = run_chaos(dataclasses.replace(EDGE, data_dir=tmp_path), say=lines.append)
    log = "\n".join(lines[-40:])
    result = report.to_dict()
    assert report.events == {"broker_kill": 1, "agent_kill": 1, "worker_kill": 1}, log
    assert report.drained, log
    edge = report.edge_agents
    summary = {k: v for k, v in edge.items() if k != "gateways"}
    assert (edge["agents"], edge["agent_kills"]) == (4, 1), summary
    for gw, one in edge["gateways"].items():
        assert one["batches"] > 10, (gw, one)  # every agent published all along
    assert edge["spooled_readings"] > 0
    zero = ("lost", "duplicated", "missing_seqs", "unknown_seqs", "dropped_batches")
    assert {k: edge[k] for k in zero} == dict.fromkeys(zero, 0), edge
    assert edge["ok"], edge
    assert result["by_kind"]["fleet"]["lost"] == 0, result
    assert result["by_kind"]["fleet"]["duplicated"] == 0, result
    assert result["by_kind"]["edge_agents"]["stored"] == edge["spooled_readings"]
    # Every hostile case was sent (wrong field types, a reserved measurement, timestamps days
    # ahead, control characters and a trailing newline, bad UTF-8, deep nesting, a payload of
    # control characters near the size limit, seq 0 then 2^62), and cost the honest nothing.
    assert set(report.hostile_cases) == set(HOSTILE_CASES), report.hostile_cases
    assert all(c["sent"] > 0 for c in report.hostile_cases.values())
    assert report.lost == 0, result
    assert report.duplicates == 0, result
    assert report.missing_seqs == 0, result
    assert report.unknown_seqs == 0, result
    assert report.service_crashes == 0, log
    assert report.ok, result


@pytest.mark.integration
def test_the_agents_ledger_check_finds_a_lost_a_doubled_and_an_unknown_batch(
    tmp_path: Path, influxd: Influxd, influx_db: str
) -> None:
    """A spool of 4 batches (seq 0-3, 2 readings each) against a database that lacks seq 1,
    holds seq 2 at two points and a seq 9 the agent never made: every one is reported."""
    config = ChaosConfig(edge_agents=1, database=influx_db)
    agents = EdgeAgents(config, tmp_path, Mosquitto(data_dir=tmp_path / "m"), lambda *a, **k: None)
    agent = agents.agents["agent-0000"]
    agent.state_dir.mkdir(parents=True)
    with Spool(agent.spool_path, budget_bytes=1 << 20, keep_delivered_s=3600) as spool:
        ids = [spool.append(seq, b"x", 2) for seq in range(4)]
        spool.delivered(ids)
    ledger = read_spool(agent.spool_path)
    assert (ledger.next_seq, ledger.waiting, len(ledger.batches)) == (4, 0, 4)
    t0 = 1_700_000_000_000_000_000
    lines = []
    for seq, at in ((0, 0), (2, 1), (2, 2), (3, 3), (9, 4)):  # no 1; 2 twice; 9 unknown
        lines.append(f"{BOOKKEEPING},gateway=agent-0000 seq={seq}i,readings=2i {t0 + at}")
    for n in range(7):  # 8 spooled readings: one lost
        lines.append(f"{AGENT_MEASUREMENT},gateway=agent-0000,device=d value=1 {t0 + n}")
    influxd.write(influx_db, "\n".join(lines).encode())
    verdict = agents.verdict(influxd, influx_db)
    one = verdict["gateways"]["agent-0000"]
    assert one["missing_seqs"] == 1, one
    assert one["duplicate_seqs"] == 1, one
    assert one["unknown_seqs"] == 1, one
    assert one["lost"] == 1, one
    assert not one["ok"]
    assert not verdict["ok"]
    assert not agents.drained(influxd, influx_db)  # seq 1 is not stored
