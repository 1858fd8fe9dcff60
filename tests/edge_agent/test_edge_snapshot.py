"""One snapshot of the agent's state feeds both the health message and ``/metrics``."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from edge_helpers import Central, await_until, base_config, make_config, running
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client.parser import text_string_to_metric_families

from edge_agent import AgentSnapshot, CheckpointStats, EdgeAgent, SpoolStats, UplinkSnapshot
from edge_agent._metrics import SnapshotCollector
from edge_agent._snapshot import health_message
from smartcity._localstack import Mosquitto, free_port


def _dropped_metric(text: str) -> dict[str, float]:
    """``edge_stage_dropped_total`` per stage, from a ``/metrics`` text."""
    return {
        s.labels["stage"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "edge_stage_dropped_total"
    }


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text: str = resp.read().decode()
        return text


@pytest.mark.integration
def test_a_parse_drop_shows_in_health_and_in_metrics(
    mosquitto: Mosquitto, topic_root: str, tmp_path: Path, central_factory: Callable[..., Central]
) -> None:
    central = central_factory(mosquitto, topic_root)
    port = free_port()
    data = base_config(tmp_path, mosquitto, topic_root)
    data["metrics"] = {"port": port}
    data["inputs"] = [
        {
            "type": "mqtt",
            "name": "local",
            "port": mosquitto.port,
            "client_id": f"in-{topic_root}",
            "subscriptions": [
                {
                    "topic": f"{topic_root}/local/+/reading",
                    "device": "{2}",
                    "measurement": "Test",
                    "fields": {"v": "$.v"},
                }
            ],
        }
    ]
    # values above 100 are dropped by a processor stage: both kinds of drop in one table
    data["processors"] = [{"stages": [{"type": "validity", "max": 100}]}]
    agent = EdgeAgent(make_config(data))
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{topic_root}")
    pub.connect("127.0.0.1", mosquitto.port)
    pub.loop_start()
    bad_topic = f"{topic_root}/local/dev-2/reading"

    async def main() -> None:
        async with running(agent):
            await await_until(lambda: agent.health().links.get("local") == "up", 10, "input up")
            for payload in (b"not json", json.dumps({"v": 1}).encode()):
                topic = bad_topic if payload == b"not json" else f"{topic_root}/local/dev-1/reading"
                pub.publish(topic, payload, qos=1).wait_for_publish(5)
            pub.publish(f"{topic_root}/local/dev-1/reading", b'{"v": 500}', qos=1)
            await await_until(lambda: len(central.readings()) >= 1, 10, "the good reading")
            await await_until(
                lambda: "validity" in agent.snapshot().dropped, 10, "the validity drop"
            )
            health = agent.health()
            assert health.dropped["input_parse"] == {f"local:{bad_topic}": 1}
            assert health.dropped["validity"] == {"dev-1/Test/v": 1}
            metrics = _dropped_metric(await asyncio.to_thread(_scrape, port))
            assert metrics == {"validity": 1.0, "input_parse": 1.0}

    try:
        asyncio.run(main())
    finally:
        pub.disconnect()
        pub.loop_stop()


def _snapshot() -> AgentSnapshot:
    return AgentSnapshot(
        gateway="gw-1",
        ts=1_750_000_000_000_000_000,
        monotonic=100.0,
        uptime_s=12.5,
        config_version=3,
        inputs={"local": "up", "meter": "retrying"},
        uplink=UplinkSnapshot(
            state="up",
            connected=True,
            connects=2,
            resumed_sessions=1,
            published_batches=9,
            acked_batches=7,
            acked_readings=70,
            resent_batches=1,
            unrouted_batches=2,
        ),
        spool=SpoolStats(
            batches=2,
            readings=20,
            bytes=2048,
            budget_bytes=1 << 20,
            oldest_age_s=1.5,
            dropped_batches=0,
            dropped_readings=0,
            next_seq=10,
        ),
        dropped={"validity": {"d/M/a": 2, "d/M/b": 3}, "input_parse": {"local:x/y": 4}},
        submitted=100,
        checkpoints=CheckpointStats(written=5, last_bytes=300, last_ms=2.0),
        cpu_s=1.0,
        rss_bytes=50 << 20,
    )


def test_health_and_metrics_render_the_same_snapshot() -> None:
    snap = _snapshot()
    health = health_message(snap, cpu_percent=1.5)
    assert health.links == {"local": "up", "meter": "retrying", "uplink": "up"}
    assert health.dropped == {"validity": {"d/M/a": 2, "d/M/b": 3}, "input_parse": {"local:x/y": 4}}
    assert (health.gw, health.ts, health.uptime_s, health.next_seq) == (
        "gw-1", snap.ts, 12.5, 10
    )
    metrics = {
        (s.name, s.labels.get("stage")): s.value
        for family in SnapshotCollector(lambda: snap).collect()
        for s in family.samples
    }
    per_stage = {
        stage: sum(per.values()) for stage, per in health.dropped.items()
    }
    assert {st: v for (n, st), v in metrics.items() if n == "edge_stage_dropped_total"} == per_stage
    assert metrics[("edge_spool_readings", None)] == health.spool.readings
    assert metrics[("edge_readings_submitted_total", None)] == 100
    assert metrics[("edge_batches_acked_total", None)] == 7
    assert metrics[("edge_uplink_up", None)] == 1.0
    assert metrics[("edge_checkpoints_written_total", None)] == 5
