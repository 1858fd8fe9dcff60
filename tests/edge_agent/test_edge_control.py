"""Remote config and commands over the control topics, against a real mosquitto."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from edge_helpers import Central, Requester, await_until, base_config, make_config, running

from edge_agent import EdgeAgent
from smartcity._localstack import Mosquitto
from telemetry import (
    Birth,
    ConfigDesired,
    ConfigReported,
    Reading,
    decode_message,
    decode_status,
    encode_message,
)

T0 = 1_750_000_000_000_000_000


def feed(agent: EdgeAgent, start: int, n: int) -> None:
    agent.submit(
        [
            Reading(
                device="dev-1",
                measurement="Test",
                ts=T0 + (start + i) * 10**6,
                fields={"v": float(i % 20)},
            )
            for i in range(n)
        ],
        None,
    )


@pytest.mark.integration
def test_remote_config_rejected_then_applied_and_persisted(
    mosquitto: Mosquitto, topic_root: str, tmp_path: Path, central_factory: Callable[..., Central]
) -> None:
    central = central_factory(mosquitto, topic_root)
    data = base_config(tmp_path, mosquitto, topic_root)
    agent = EdgeAgent(make_config(data))
    desired_topic = agent.topics.config_desired("gw-test")
    reported_topic = agent.topics.config_reported("gw-test")

    def reports() -> list[ConfigReported]:
        return [decode_message(p, ConfigReported) for p in central.on(reported_topic)]

    async def main() -> None:
        async with running(agent):
            await await_until(lambda: agent.uplink.connected, 10)
            feed(agent, 0, 50)
            await await_until(lambda: len(central.readings()) == 50, 10)
            bad = dict(data, processors=[{"stages": [{"type": "deadband"}]}])
            payload = encode_message(ConfigDesired(version=2, config=bad))
            await asyncio.to_thread(central.publish, desired_topic, payload, retain=True)
            await await_until(lambda: len(reports()) == 1, 10, "rejection")
            rep = reports()[0]
            assert (rep.status, rep.version, rep.running_version) == ("rejected", 2, 0)
            assert "processors[0].stages[0]" in (rep.reason or "")
            assert "absolute, percent" in (rep.reason or "")
            # the old config keeps running
            feed(agent, 50, 50)
            await await_until(lambda: len(central.readings()) == 100, 10)
            fixed = dict(data, broker=dict(data["broker"], port=1))
            payload = encode_message(ConfigDesired(version=3, config=fixed))
            await asyncio.to_thread(central.publish, desired_topic, payload, retain=True)
            await await_until(lambda: len(reports()) == 2, 10)
            assert "broker: cannot be changed remotely" in (reports()[1].reason or "")
            good = dict(
                data,
                processors=[{"stages": [{"type": "validity", "max": 9}]}],
                devices=[{"id": "dev-1", "kind": "meter"}],
            )
            payload = encode_message(ConfigDesired(version=4, config=good))
            await asyncio.to_thread(central.publish, desired_topic, payload, retain=True)
            await await_until(lambda: agent.config_version == 4, 10, "applied")
            await await_until(lambda: len(reports()) == 3, 10)
            assert (reports()[2].status, reports()[2].running_version) == ("applied", 4)
            feed(agent, 100, 40)  # values 0..19, twice: 10..19 are now out of range
            await await_until(lambda: len(central.readings()) == 120, 10)
            await asyncio.sleep(0.3)
            assert len(central.readings()) == 120
            assert agent.health().dropped["validity"]["dev-1/Test/v"] == 20
        await asyncio.to_thread(central.publish, desired_topic, b"", retain=True)

    asyncio.run(main())
    births = [decode_status(p) for p in central.on(agent.topics.status("gw-test"))]
    assert any(isinstance(b, Birth) and b.config_version == 4 and b.devices for b in births)
    stored = json.loads((tmp_path / "state" / "remote-config.json").read_text())
    assert stored["version"] == 4
    # a restarted agent runs the persisted remote config
    again = EdgeAgent(make_config(data))
    assert again.config_version == 4
    assert again.config.processors[0].stages[0].type == "validity"


@pytest.mark.integration
def test_commands_ping_reannounce_and_unknown(
    mosquitto: Mosquitto, topic_root: str, tmp_path: Path, central_factory: Callable[..., Central]
) -> None:
    central = central_factory(mosquitto, topic_root)
    agent = EdgeAgent(make_config(base_config(tmp_path, mosquitto, topic_root)))
    req = Requester(mosquitto.port, topic_root)
    status = agent.topics.status("gw-test")

    async def main() -> None:
        async with running(agent):
            await await_until(lambda: agent.uplink.connected, 10)
            await await_until(lambda: len(central.on(status)) == 1, 10, "birth")
            cmd = agent.topics.command("gw-test")
            await asyncio.to_thread(req.request, cmd, "ping", b"c1")
            await asyncio.to_thread(req.request, cmd, "reannounce", b"c2")
            await asyncio.to_thread(req.request, cmd, "reboot-the-city", b"c3")
            await await_until(lambda: len(req.replies) == 3, 10, "three replies")
            await await_until(lambda: len(central.on(status)) == 2, 10, "second birth")

    try:
        asyncio.run(main())
    finally:
        req.close()
    assert req.replies[b"c1"].ok
    assert req.replies[b"c1"].result["pong"] is True
    assert req.replies[b"c2"].ok
    assert req.replies[b"c2"].result == {"published": True}
    assert not req.replies[b"c3"].ok
    assert "unknown command" in (req.replies[b"c3"].error or "")
