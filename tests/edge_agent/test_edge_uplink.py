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

    asyncio.run(main())
    await_until_sync = [decode_status(p) for p in central.on(status)]
    birth = await_until_sync[0]
    assert isinstance(birth, Birth)
    assert birth.devices[0].id == "dev-1"
    health = decode_message(central.on(agent.topics.health("gw-test"))[-1], Health)
    assert health.links["uplink"] == "up"
    assert health.spool.dropped_readings == 0
    seqs = sorted(b.seq for b in central.batches)
    assert seqs == list(range(len(seqs)))
    last = decode_status(central.on(status)[-1]) if len(central.on(status)) > 1 else None
    assert isinstance(last, Death)
    assert last.reason == "shutdown"
