"""Helpers for edge agent tests: a central subscriber, config builders, an in-process agent."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent import AgentConfig, EdgeAgent, parse_config
from smartcity._localstack import Mosquitto, free_port
from telemetry import Batch, CommandRequest, CommandResponse, Topics, decode_batch, decode_message
from telemetry import encode_message as encode


class Central:
    """A subscriber on the central broker: collects batches, status, health, replies."""

    def __init__(
        self,
        port: int,
        root: str,
        gateway: str,
        *,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.topics = Topics(root)
        self.gateway = gateway
        self.batches: list[Batch] = []
        self.messages: dict[str, list[bytes]] = {}
        self.arrivals: list[tuple[float, int]] = []  # (wall clock s, seq)
        self.lock = threading.Lock()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5
        )
        self.client.on_message = self._on_message
        if username is not None:
            self.client.username_pw_set(username, password)
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
                self.arrivals.append((time.time(), b.seq))
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
            # one persistent session per test, even on the shared broker
            "client_id": f"edge-{gateway}-{root}",
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




class Requester:
    """An operator's MQTT v5 client sending commands with response topic + correlation data."""

    def __init__(self, port: int, root: str, gateway: str = "gw-test") -> None:
        self.replies: dict[bytes, CommandResponse] = {}
        self.reply_count = 0
        cid = f"ops-{uuid.uuid4().hex[:8]}"
        self.response_topic = f"{root}/v1/{gateway}/cmd/response/{cid}"
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=cid, protocol=MQTTProtocolVersion.MQTTv5
        )
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(self.response_topic, qos=1)

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        corr = msg.properties.CorrelationData  # type: ignore[union-attr]
        self.replies[corr] = decode_message(msg.payload, CommandResponse)
        self.reply_count += 1

    def request(self, topic: str, cmd: str, corr: bytes, **args: Any) -> None:
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.response_topic
        props.CorrelationData = corr
        payload = encode(CommandRequest(cmd=cmd, args=args))
        self.client.publish(topic, payload, qos=1, properties=props).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class LinkProxy:
    """A TCP proxy standing for the gateway's uplink (cellular modem) in front of the broker.

    :meth:`cut` closes every proxied connection and refuses new ones until :meth:`resume`
    (the broker sees the gateway's socket close, as when a modem drops); ``delay_s`` delays
    every chunk in both directions (a slow link: each PUBACK comes a round trip later).
    It runs its own event loop in a thread, so it works for in-process and subprocess agents.
    """

    def __init__(self, target_port: int, *, delay_s: float = 0.0) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.delay_s = delay_s
        self.accepted = 0
        self._up = True
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="link-proxy", daemon=True)
        self._thread.start()
        assert self._ready.wait(5)

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", self.port)
        )
        self._ready.set()
        self._loop.run_forever()
        server.close()
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.run_until_complete(server.wait_closed())
        self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._up:
            writer.close()
            return
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self.accepted += 1
        self._writers |= {writer, up_w}
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._pump(reader, up_w), name="link-proxy.up")
                tg.create_task(self._pump(up_r, writer), name="link-proxy.down")
        except* (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (writer, up_w):
                self._writers.discard(w)
                w.close()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    break
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                dst.write(data)
                await dst.drain()
            dst.close()

        async with asyncio.TaskGroup() as tg:
            tg.create_task(deliver(), name="link-proxy.deliver")
            while True:
                data = await src.read(65536)
                queue.put_nowait((time.monotonic() + self.delay_s, data))
                if not data:
                    break

    def _call(self, fn: Callable[[], None]) -> None:
        done = threading.Event()

        def run() -> None:
            try:
                fn()
            finally:
                done.set()

        self._loop.call_soon_threadsafe(run)
        assert done.wait(5)

    def cut(self) -> None:
        def cut() -> None:
            self._up = False
            for w in list(self._writers):
                with contextlib.suppress(OSError):
                    w.transport.abort()

        self._call(cut)

    def resume(self) -> None:
        def resume() -> None:
            self._up = True

        self._call(resume)

    def close(self) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
