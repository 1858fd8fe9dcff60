"""Faults with real processes: broker outage, agent SIGKILL, spool over budget."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml
from edge_helpers import Central, await_until, base_config, make_config, running, wait_until
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent import EdgeAgent
from smartcity._localstack import Mosquitto
from telemetry import Health, Reading

T0 = 1_750_000_000_000_000_000


def reading(i: int, device: str = "dev-1") -> Reading:
    return Reading(device=device, measurement="Test", ts=T0 + i * 1_000_000, fields={"v": float(i)})


@pytest.mark.integration
@pytest.mark.slow
def test_broker_down_while_readings_flow_loses_nothing(
    mosquitto_factory: Callable[..., Mosquitto],
    topic_root: str,
    tmp_path: Path,
    central_factory: Callable[..., Central],
) -> None:
    broker = mosquitto_factory()
    central = central_factory(broker, topic_root)
    agent = EdgeAgent(make_config(base_config(tmp_path, broker, topic_root)))
    sent = 0

    async def feed(seconds: float) -> None:
        nonlocal sent
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            agent.submit([reading(sent + k) for k in range(20)], None)
            sent += 20
            await asyncio.sleep(0.05)

    async def main() -> None:
        async with running(agent):
            await feed(2.0)
            await asyncio.to_thread(broker.stop)
            await feed(12.0)  # several reconnect rounds of the backoff
            assert agent.spool.stats().readings > 0
            await asyncio.to_thread(broker.start)
            await feed(2.0)
            await await_until(lambda: len(central.readings()) == sent, 60, "every reading")
            # Clean start was off from the first connect: the session survived the restart.
            assert agent.uplink.stats.resumed_sessions >= 1

    asyncio.run(main())
    assert len(central.readings()) == sent
    seqs = {b.seq for b in central.batches}
    assert seqs == set(range(max(seqs) + 1))


def _agent_cmd(config: Path) -> list[str]:
    return [sys.executable, "-m", "edge_agent", "run", "--config", str(config)]


@pytest.mark.integration
def test_agent_sigkill_mid_stream_loses_no_reading(
    mosquitto: Mosquitto, topic_root: str, tmp_path: Path, central_factory: Callable[..., Central]
) -> None:
    central = central_factory(mosquitto, topic_root)
    data = base_config(tmp_path, mosquitto, topic_root)
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
                    "timestamp": "$.t",
                }
            ],
        }
    ]
    cfg = tmp_path / "edge.yaml"
    cfg.write_text(yaml.safe_dump(data))
    log = (tmp_path / "agent.log").open("ab")
    agent = subprocess.Popen(_agent_cmd(cfg), stdout=log, stderr=log)
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{topic_root}")
    pub.connect("127.0.0.1", mosquitto.port)
    pub.loop_start()
    total = 3000
    try:
        wait_until(lambda: bool(central.on(f"{topic_root}/v1/gw-test/status")), 15, "birth")
        for i in range(total):
            payload = json.dumps({"v": i, "t": T0 + i * 1_000_000}).encode()
            pub.publish(f"{topic_root}/local/dev-{i % 7}/reading", payload, qos=1)
            if i == total // 3:
                wait_until(lambda: len(central.readings()) > 100, 15, "some readings through")
                agent.send_signal(signal.SIGKILL)
                agent.wait()
            if i == total // 2:
                agent = subprocess.Popen(_agent_cmd(cfg), stdout=log, stderr=log)
            time.sleep(0.001)
        wait_until(lambda: len(central.readings()) == total, 60, "every reading")
    finally:
        pub.disconnect()
        pub.loop_stop()
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(20) == 0
        log.close()
    seqs = sorted({b.seq for b in central.batches})
    assert seqs == list(range(seqs[-1] + 1)), "seq survives SIGKILL without gaps"


@pytest.mark.integration
def test_spool_over_budget_drops_oldest_counts_and_reports(
    mosquitto_factory: Callable[..., Mosquitto],
    topic_root: str,
    tmp_path: Path,
    central_factory: Callable[..., Central],
) -> None:
    broker = mosquitto_factory()
    central = central_factory(broker, topic_root)
    data = base_config(tmp_path, broker, topic_root)
    data["spool"] = {"budget_bytes": 16384}
    data["batch"] = {"max_readings": 50, "max_bytes": 4096, "max_age_s": 0.1}
    agent = EdgeAgent(make_config(data))
    broker.stop()
    n = 2000

    async def main() -> Health:
        async with running(agent):
            for i in range(0, n, 50):
                agent.submit([reading(i + k) for k in range(50)], None)
                await asyncio.sleep(0.01)
            await await_until(lambda: agent.submitted == n and len(agent.batcher) == 0, 5)
            await asyncio.sleep(0.3)
            health = agent.health()
            await asyncio.to_thread(broker.start)
            await await_until(lambda: agent.spool.stats().batches == 0, 20, "drain")
            kept = n - health.spool.dropped_readings
            await await_until(lambda: len(central.readings()) == kept, 10)
            return health

    health = asyncio.run(main())
    assert health.spool.dropped_readings > 0
    assert health.spool.bytes <= 16384
    assert health.spool.dropped_readings + health.spool.readings == n
    got = sorted(r[1] for r in central.readings())
    # exactly the newest readings survived: the oldest were dropped
    assert got == [T0 + i * 1_000_000 for i in range(n - len(got), n)]
