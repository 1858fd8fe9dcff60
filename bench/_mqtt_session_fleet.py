"""Shape (b) of bench/mqtt_session.py, **fleet**: many connections in one event loop, each
keeping a window of QoS 1 publishes in flight (paho, aiomqtt, foundation.mqtt awaited and
``publish_nowait``).

Imported by bench/mqtt_session.py (run as a script, its directory is on ``sys.path``).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt
from _mqtt_session_parts import Args, Measured, PahoInLoop, Window, profiled
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from foundation.mqtt import MqttSession, SessionConfig

__all__ = ["bench_fleet"]


async def fleet_paho(port: int, args: Args) -> Measured:
    payload = b"y" * args.fleet_payload
    acked = 0
    measuring = False
    drivers = []

    def make(i: int) -> PahoInLoop:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"fp-{i}", protocol=MQTTProtocolVersion.MQTTv5
        )
        client.max_inflight_messages_set(args.window)

        def on_publish(c: mqtt.Client, _u: Any, _mid: int, rc: Any, _p: Any) -> None:
            nonlocal acked
            acked += measuring
            if running:
                c.publish(f"bench/fleet/{i}", payload, qos=1)

        client.on_publish = on_publish
        return PahoInLoop(client)

    running = True
    for i in range(args.sessions):
        d = make(i)
        await d.connect(port, clean_start=True)
        drivers.append(d)
    for i, d in enumerate(drivers):
        for _ in range(args.window):
            d.client.publish(f"bench/fleet/{i}", payload, qos=1)
    await asyncio.sleep(0.5)
    measuring = True
    window = Window()
    await asyncio.sleep(args.seconds)
    rate = window.stop(acked)
    running = False
    await asyncio.sleep(0.2)
    for d in drivers:
        await d.disconnect()
    return rate


async def _timed(counter: list[int], args: Args) -> Measured:
    await asyncio.sleep(0.5)
    before, window = counter[0], Window()
    await asyncio.sleep(args.seconds)
    return window.stop(counter[0] - before)


async def fleet_aiomqtt(port: int, args: Args) -> Measured:
    payload = b"y" * args.fleet_payload
    counter = [0]
    clients = [
        aiomqtt.Client("127.0.0.1", port, identifier=f"fa-{i}", protocol=aiomqtt.ProtocolVersion.V5)
        for i in range(args.sessions)
    ]
    for c in clients:
        await c.__aenter__()

    running = True

    async def worker(c: aiomqtt.Client, topic: str) -> None:
        # A flag, not cancel(): on Python 3.11 aiomqtt's asyncio.wait_for can swallow a
        # cancellation that races with the PUBACK, and the worker would never stop.
        while running:
            await c.publish(topic, payload, qos=1)
            counter[0] += 1

    try:
        async with asyncio.TaskGroup() as tg:
            for i, c in enumerate(clients):
                for _ in range(args.window):
                    tg.create_task(worker(c, f"bench/fleet/{i}"))
            rate = await _timed(counter, args)
            running = False
    finally:
        for c in clients:
            await c.__aexit__(None, None, None)
    return rate


async def fleet_session(port: int, args: Args) -> Measured:
    payload = b"y" * args.fleet_payload
    counter = [0]
    sessions = [
        MqttSession(SessionConfig(port=port, client_id=f"fs-{i}", max_inflight=args.window))
        for i in range(args.sessions)
    ]
    for s in sessions:
        await s.__aenter__()

    running = True

    async def worker(s: MqttSession, topic: str) -> None:
        while running:
            await s.publish(topic, payload, qos=1)
            counter[0] += 1

    try:
        async with asyncio.TaskGroup() as tg:
            for i, s in enumerate(sessions):
                for _ in range(args.window):
                    tg.create_task(worker(s, f"bench/fleet/{i}"))
            rate = await _timed(counter, args)
            running = False
    finally:
        for s in sessions:
            await s.__aexit__(None, None, None)
    return rate


async def fleet_session_nowait(port: int, args: Args) -> Measured:
    payload = b"y" * args.fleet_payload
    counter = [0]
    running = True
    sessions = [
        MqttSession(SessionConfig(port=port, client_id=f"fn-{i}", max_inflight=args.window))
        for i in range(args.sessions)
    ]
    for s in sessions:
        await s.__aenter__()

    def fill(s: MqttSession, topic: str) -> None:
        while running and s.inflight < s.window:
            s.publish_nowait(topic, payload).add_done_callback(
                functools.partial(acked, s=s, topic=topic)
            )

    def acked(f: asyncio.Future[int], s: MqttSession, topic: str) -> None:
        if not f.cancelled() and f.exception() is None:
            counter[0] += 1
        fill(s, topic)

    for i, s in enumerate(sessions):
        fill(s, f"bench/fleet/{i}")
    try:
        rate = await _timed(counter, args)
    finally:
        running = False
        await asyncio.sleep(0.2)
        for s in sessions:
            await s.__aexit__(None, None, None)
    return rate


FLEET: dict[str, Callable[[int, Args], Awaitable[Measured]]] = {
    "paho": fleet_paho,
    "aiomqtt": fleet_aiomqtt,
    "session": fleet_session,
    "session_nowait": fleet_session_nowait,
}


async def bench_fleet(port: int, args: Args, repeat: int) -> dict[str, Measured]:
    rates = {}
    for name, run in FLEET.items():
        async with asyncio.timeout(120):
            with profiled(args, f"fleet-{name}-{repeat}"):
                rates[name] = await run(port, args)
    return rates
