"""Helpers for edge agent tests: a central subscriber, config builders, an in-process agent."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent import AgentConfig, EdgeAgent, parse_config
from smartcity._localstack import Mosquitto
from telemetry import Batch, Topics, decode_batch


class Central:
    """A subscriber on the central broker: collects batches, status, health, replies."""

    def __init__(self, port: int, root: str, gateway: str, *, client_id: str) -> None:
        self.topics = Topics(root)
        self.gateway = gateway
        self.batches: list[Batch] = []
        self.messages: dict[str, list[bytes]] = {}
        self.arrivals: list[tuple[float, int]] = []  # (monotonic, seq)
        self.lock = threading.Lock()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5
        )
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        base = f"{root}/v1/{gateway}/"

        def on_connect(c: mqtt.Client, *_a: object) -> None:
            c.subscribe([(base + "#", 1)])

        self.client.on_connect = on_connect
        self.client.on_subscribe = lambda *_a: subscribed.set()
        # Persistent session: what the agent publishes while this subscriber reconnects after
        # a broker restart is queued for it, so outage tests see everything.
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.connect("127.0.0.1", port, clean_start=False, properties=props)
        self.client.loop_start()
        assert subscribed.wait(10)

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            if msg.topic.endswith("/telemetry"):
                b = decode_batch(msg.payload)
                self.batches.append(b)
                self.arrivals.append((time.monotonic(), b.seq))
            else:
                self.messages.setdefault(msg.topic, []).append(bytes(msg.payload))

    def readings(self) -> set[tuple[str, int, str]]:
        """Distinct (device, ts, measurement) seen."""
        with self.lock:
            return {(r.device, r.ts, r.measurement) for b in self.batches for r in b.readings}

    def values(self, field: str) -> set[tuple[str, int, Any]]:
        with self.lock:
            return {
                (r.device, r.ts, r.fields[field])
                for b in self.batches
                for r in b.readings
                if field in r.fields
            }

    def on(self, topic: str) -> list[bytes]:
        with self.lock:
            return list(self.messages.get(topic, []))

    def publish(self, topic: str, payload: bytes, **kw: Any) -> None:
        self.client.publish(topic, payload, qos=1, **kw).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_until(cond: Callable[[], bool], timeout: float, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def await_until(cond: Callable[[], bool], within: float, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {within}s waiting for {what}")


def base_config(
    tmp_path: Path, broker: Mosquitto, root: str, gateway: str = "gw-test", **extra: Any
) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "gateway": {"id": gateway, "state_dir": str(tmp_path / "state")},
        "broker": {
            "host": "127.0.0.1",
            "port": broker.port,
            "topic_root": root,
            "backoff_initial_s": 0.2,
            "backoff_max_s": 1.0,
            "connect_timeout_s": 3.0,
        },
        "batch": {"max_readings": 100, "max_age_s": 0.2},
        "health": {"interval_s": 0.5},
        "tick_s": 0.05,
    }
    cfg.update(extra)
    return cfg


def make_config(data: dict[str, Any]) -> AgentConfig:
    return parse_config(data, source="test")


@asynccontextmanager
async def running(agent: EdgeAgent) -> AsyncIterator[EdgeAgent]:
    """Run ``agent`` in a task of a TaskGroup; stop it cleanly on exit."""
    async with asyncio.TaskGroup() as tg:
        tg.create_task(agent.run(), name=f"test-agent[{agent.gateway}].run")
        await asyncio.wait_for(agent.ready.wait(), 10)
        try:
            yield agent
        finally:
            agent.stop()


