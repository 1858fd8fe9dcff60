"""The chaos run in the cluster profile (``smartcity sim chaos --cluster``), short: a fleet
on a 3-node NATS JetStream cluster, two InfluxDB replicas each fed by its own worker group
and durable consumer, while the stream leader is SIGKILLed, the whole cluster restarts, a
replica is SIGKILLed, a worker is SIGKILLed and gateways lose their uplink or reboot. Every
replica must then hold exactly what the cluster acknowledged, per gateway."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import pytest

from smartcity._chaos import CLUSTER_KINDS, ChaosConfig, plan_chaos, run_chaos

#: 10 gateways, 35 s of chaos (one event of each kind) with a 12 s quiet tail: ~1 minute.
SHORT = ChaosConfig(
    cluster=True,
    gateways=10,
    workers=1,
    replicas=2,
    speed=30.0,
    seed=3,
    reference_s=5.0,
    duration_s=28.0,
    quiet_s=10.0,
    extra_events=False,
    node_down_s=(2.0, 4.0),
    cluster_down_s=(1.0, 3.0),
    replica_down_s=(5.0, 9.0),
    gateway_fault_s=(3.0, 8.0),
    drain_timeout_s=90.0,
)


def test_the_cluster_schedule_has_each_kind_and_never_two_nats_events_at_once() -> None:
    events = plan_chaos(SHORT)
    assert sorted(e.kind for e in events) == sorted(CLUSTER_KINDS)
    longer = dataclasses.replace(SHORT, extra_events=True, duration_s=90.0, gap_s=(2.0, 5.0))
    events = plan_chaos(longer)
    nats = sorted((e.at_s, e.end_s) for e in events if e.kind in ("node_kill", "cluster_restart"))
    for (_, end), (start, _) in itertools.pairwise(nats):
        assert start >= end
    kills = [e.target for e in events if e.kind == "node_kill"]
    assert kills[:3] == ["stream leader", "meta leader", "follower"][: len(kills)]
    assert all(e.target.startswith("ingest-") for e in events if e.kind == "worker_kill")
    with pytest.raises(ValueError, match="cluster profile must be among"):
        ChaosConfig(cluster=True, kinds=("broker_kill",))
    with pytest.raises(ValueError, match="single-node profile must be among"):
        ChaosConfig(kinds=("node_kill",))


@pytest.mark.integration
@pytest.mark.slow
def test_cluster_chaos_loses_and_doubles_nothing_in_every_replica(tmp_path: Path) -> None:
    lines: list[str] = []
    report = run_chaos(dataclasses.replace(SHORT, data_dir=tmp_path), say=lines.append)
    log = "\n".join(lines[-60:])
    assert set(report.events) == set(CLUSTER_KINDS), log
    assert any("nats SIGKILL" in line and "target=stream leader" in line for line in lines), log
    assert report.drained, log
    assert report.sent > 0
    assert report.unacked == 0, log
    assert len(report.replicas) == 2
    for replica in report.replicas:
        assert replica["stored"] == report.sent, report.to_dict()
        assert replica["lost"] == 0, report.to_dict()
        assert replica["duplicates"] == 0, report.to_dict()
        assert replica["missing_seqs"] == 0, report.to_dict()
        assert replica["unknown_seqs"] == 0, report.to_dict()
        assert replica["stored_batches"] == report.acked_batches, report.to_dict()
        assert replica["catch_up_after_last_fault_s"] is not None, report.to_dict()
    assert report.catch_up_after_last_fault_s is not None
    assert report.service_crashes == 0, log
    assert report.ok
