"""The agent against a real mosquitto: delivery, presence, health, outage and replay."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from edge_helpers import Central, await_until, base_config, make_config, running

from edge_agent import EdgeAgent
from smartcity._localstack import Mosquitto
from telemetry import Birth, Death, Health, Reading, decode_message, decode_status

T0 = 1_750_000_000_000_000_000


def readings(start: int, n: int, device: str = "dev-1") -> list[Reading]:
    return [
        Reading(
            device=device,
            measurement="Test",
            ts=T0 + (start + i) * 1_000_000,
            fields={"v": float(start + i)},
        )
        for i in range(n)
    ]


@pytest.mark.integration
def test_readings_arrive_with_birth_health_and_death(
    mosquitto: Mosquitto, topic_root: str, tmp_path: Path, central_factory: Callable[..., Central]
) -> None:
    central = central_factory(mosquitto, topic_root)
    data = base_config(tmp_path, mosquitto, topic_root)
    data["devices"] = [{"id": "dev-1", "kind": "test", "measurements": {"Test": {"v": "1"}}}]
    agent = EdgeAgent(make_config(data))
    status = agent.topics.status("gw-test")

    async def main() -> None:
        async with running(agent):
            agent.submit(readings(0, 250), None)
            await await_until(lambda: len(central.readings()) == 250, 10, "250 readings")
            await await_until(lambda: bool(central.on(agent.topics.health("gw-test"))), 5)
        # The death is published as the agent stops; it reaches the central subscriber
        # through the broker some time later.
        await await_until(died, 10, "the death after the birth on the status topic")

    def died() -> bool:
        seen = central.on(status)
        return len(seen) > 1 and isinstance(decode_status(seen[-1]), Death)

    asyncio.run(main())
    statuses = [decode_status(p) for p in central.on(status)]
    birth = statuses[0]
    assert isinstance(birth, Birth)
    assert birth.devices[0].id == "dev-1"
    health = decode_message(central.on(agent.topics.health("gw-test"))[-1], Health)
    assert health.links["uplink"] == "up"
    assert health.spool.dropped_readings == 0
    seqs = sorted(b.seq for b in central.batches)
    assert seqs == list(range(len(seqs)))
    last = statuses[-1]
    assert len(statuses) > 1
    assert isinstance(last, Death)
    assert last.reason == "shutdown"


@pytest.mark.integration
def test_a_batch_the_broker_routes_to_nobody_stays_in_the_spool_until_someone_subscribes(
    mosquitto_factory: Callable[..., Mosquitto],
    topic_root: str,
    tmp_path: Path,
    central_factory: Callable[..., Central],
) -> None:
    """PUBACK 0x10 "No matching subscribers" (e.g. ingest's shared subscription not back
    yet after a broker restart: mosquitto does not restore it) means delivered to nobody.
    The agent keeps those batches and sends them again once a subscriber is there."""
    broker = mosquitto_factory()
    agent = EdgeAgent(make_config(base_config(tmp_path, broker, topic_root)))

    async def main() -> Central:
        async with running(agent):
            await await_until(lambda: agent.uplink.connected, 10, "connected")
            agent.submit(readings(0, 250), None)
            await await_until(lambda: agent.uplink.stats.unrouted_batches >= 3, 10, "0x10")
            await asyncio.sleep(1.0)
            assert agent.uplink.stats.acked_batches == 0
            assert agent.spool.stats().readings == 250  # all still held
            central = await asyncio.to_thread(central_factory, broker, topic_root)
            await await_until(lambda: len(central.readings()) == 250, 20, "250 readings")
            await await_until(lambda: agent.spool.stats().readings == 0, 10, "spool empty")
            return central

    central = asyncio.run(main())
    seqs = sorted({b.seq for b in central.batches})
    assert seqs == list(range(len(seqs)))
