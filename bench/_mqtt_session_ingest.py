"""Shape (a) of bench/mqtt_session.py, **ingest**: one subscriber drains a persistent-session
backlog of QoS 1 messages, acknowledging each one (paho, aiomqtt, foundation.mqtt).

Imported by bench/mqtt_session.py (run as a script, its directory is on ``sys.path``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt
from _mqtt_session_parts import Args, Measured, PahoInLoop, Window, connect_props, profiled
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from foundation.mqtt import Message, MqttSession, SessionConfig

__all__ = ["bench_ingest"]


async def prepare_backlog(port: int, client_id: str, topic: str, args: Args) -> None:
    """Create the persistent session with its subscription, go away, fill the backlog."""
    cfg = SessionConfig(port=port, client_id=client_id, clean_start=False, session_expiry_s=600)
    async with MqttSession(cfg) as sub:
        await sub.subscribe(topic, qos=1)
    payload = b"x" * args.payload
    async with MqttSession(SessionConfig(port=port, max_inflight=500)) as pub:
        futs: list[asyncio.Future[int]] = []
        for _ in range(args.messages):
            if pub.inflight >= pub.window:
                await asyncio.wait(futs[-pub.window :], return_when=asyncio.FIRST_COMPLETED)
            futs.append(pub.publish_nowait(topic, payload))
        await asyncio.gather(*futs)


async def drain_paho(port: int, client_id: str, args: Args) -> Measured:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=MQTTProtocolVersion.MQTTv5,
        manual_ack=True,
    )
    driver = PahoInLoop(client)
    done = driver.loop.create_future()
    count = 0

    def on_message(c: mqtt.Client, _u: Any, m: mqtt.MQTTMessage) -> None:
        nonlocal count
        c.ack(m.mid, m.qos)
        count += 1
        if count == args.messages and not done.done():
            done.set_result(None)

    client.on_message = on_message
    await driver.connect(port, clean_start=False, properties=connect_props(args.receive_maximum))
    window = Window()
    await done
    measured = window.stop(args.messages)
    await driver.disconnect()
    return measured


async def drain_aiomqtt(port: int, client_id: str, args: Args) -> Measured:
    client = aiomqtt.Client(
        "127.0.0.1",
        port,
        identifier=client_id,
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=False,
        properties=connect_props(args.receive_maximum),
    )
    async with client:
        window = Window()
        count = 0
        async for _ in client.messages:  # acked by paho on receipt: no manual ack in aiomqtt
            count += 1
            if count == args.messages:
                break
        return window.stop(count)


async def drain_session(port: int, client_id: str, args: Args) -> Measured:
    cfg = SessionConfig(
        port=port,
        client_id=client_id,
        clean_start=False,
        session_expiry_s=600,
        manual_ack=True,
        receive_maximum=args.receive_maximum,
    )
    async with MqttSession(cfg) as s:
        window = Window()
        count = 0
        msg: Message
        async for msg in s.messages():
            await msg.ack()
            count += 1
            if count == args.messages:
                break
        return window.stop(count)


INGEST: dict[str, Callable[[int, str, Args], Awaitable[Measured]]] = {
    "paho": drain_paho,
    "aiomqtt": drain_aiomqtt,
    "session": drain_session,
}


async def bench_ingest(port: int, args: Args, run: int) -> dict[str, Measured]:
    rates = {}
    for name, drain in INGEST.items():
        client_id = f"bench-{name}-{run}"
        topic = f"bench/ingest/{name}/{run}"
        await prepare_backlog(port, client_id, topic, args)
        async with asyncio.timeout(300):
            with profiled(args, f"ingest-{name}-{run}"):
                rates[name] = await drain(port, client_id, args)
    return rates
