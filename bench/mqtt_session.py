"""Benchmark: the MQTT session layer (foundation.mqtt) against raw paho and aiomqtt.

Two shapes of the platform, against a private mosquitto started here
(``smartcity._localstack.Mosquitto``):

(a) **ingest**: one subscriber drains a persistent-session backlog of ``--messages`` QoS 1
    messages of ``--payload`` bytes (Receive Maximum ``--receive-maximum``), acknowledging
    each one; messages per second from CONNACK to the last message. The backlog is filled
    before the subscriber connects, so the figure is the consumer's, not the publisher's.
(b) **fleet**: ``--sessions`` connections in one event loop, each keeping ``--window``
    QoS 1 publishes of ``--fleet-payload`` bytes in flight and waiting for every PUBACK;
    acknowledged messages per second over ``--seconds``.

Each shape runs, interleaved in every repeat:

- ``paho``: raw paho driven in the event loop (add_reader / add_writer / a misc timer), the
  same-run reference every ratio is taken against;
- ``aiomqtt``: aiomqtt 2.x. It has no manual ack, so (a) uses its auto-ack (an upper bound);
- ``session``: foundation.mqtt (manual ack in (a); ``await publish()`` in (b));
- ``session_nowait`` (b only): ``publish_nowait()`` with done callbacks, as the fleet uses it.

Each figure comes with the benchmark process's CPU time per message over the same window
(``cpu_us_per_msg``: the client's cost, which the shared machine's load disturbs less than
the rate; the broker runs in its own process). ``--profile DIR`` runs every variant under
cProfile and leaves ``DIR/<shape>-<variant>-<repeat>.prof`` (its rates are not figures).

Run by hand (never in the test suite): ``.venv/bin/python bench/mqtt_session.py``; quick:
``--messages 20000 --sessions 100 --seconds 3 --repeats 3``. Figures are medians over the
repeats; ratios are medians of the per-repeat ratios to ``paho``. The last line is one
JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import functools
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from foundation.mqtt import Message, MqttSession, SessionConfig
from smartcity._localstack import Mosquitto

Args = argparse.Namespace


@dataclass(frozen=True, slots=True)
class Measured:
    """Messages over a window of wall time, with the process's CPU time in that window."""

    messages: int
    seconds: float
    cpu_s: float

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    @property
    def cpu_us(self) -> float:
        return self.cpu_s / max(self.messages, 1) * 1e6


class Window:
    """Starts a measuring window (wall and process CPU time); :meth:`stop` closes it."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.cpu0 = time.process_time()

    def stop(self, messages: int) -> Measured:
        return Measured(messages, time.perf_counter() - self.t0, time.process_time() - self.cpu0)


# -- raw paho in the event loop: the reference driver ------------------------------------------
class PahoInLoop:
    """The smallest correct way to drive paho from asyncio (what aiomqtt does, minus its
    thread hand-off): one loop_read per readable event, loop_write while paho has bytes."""

    def __init__(self, client: mqtt.Client) -> None:
        self.client = client
        self.loop = asyncio.get_running_loop()
        self.connected: asyncio.Future[None] = self.loop.create_future()
        self.fd = -1
        self.misc: asyncio.TimerHandle | None = None
        client.on_connect = self._on_connect

    def _on_connect(self, *_a: Any) -> None:
        if not self.connected.done():
            self.connected.set_result(None)

    async def connect(self, port: int, **kw: Any) -> None:
        c = self.client
        await self.loop.run_in_executor(None, lambda: c.connect("127.0.0.1", port, 60, **kw))
        sock = c.socket()
        assert sock is not None
        self.fd = sock.fileno()
        c.on_socket_register_write = lambda *_: self._want_write()
        c.on_socket_unregister_write = lambda *_: self._no_write()
        c.on_socket_close = lambda *_: self._close()
        self.loop.add_reader(self.fd, c.loop_read)
        if c.want_write():
            self.loop.add_writer(self.fd, c.loop_write)
        self.misc = self.loop.call_later(1, self._misc)
        await self.connected

    def _want_write(self) -> None:
        self.loop.add_writer(self.fd, self.client.loop_write)

    def _no_write(self) -> None:
        self.loop.remove_writer(self.fd)

    def _misc(self) -> None:
        self.client.loop_misc()
        self.misc = self.loop.call_later(1, self._misc)

    def _close(self) -> None:
        self.loop.remove_reader(self.fd)
        self.loop.remove_writer(self.fd)
        if self.misc is not None:
            self.misc.cancel()

    async def disconnect(self) -> None:
        self.client.disconnect()
        await asyncio.sleep(0.05)
        self._close()


def _connect_props(receive_maximum: int) -> Properties:
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 600
    props.ReceiveMaximum = receive_maximum
    return props


# -- (a) the ingest shape ----------------------------------------------------------------------
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
    await driver.connect(port, clean_start=False, properties=_connect_props(args.receive_maximum))
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
        properties=_connect_props(args.receive_maximum),
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


@contextlib.contextmanager
def profiled(args: Args, name: str) -> Iterator[None]:
    """Run the block under cProfile when ``--profile DIR`` is given (``DIR/<name>.prof``)."""
    if args.profile is None:
        yield
        return
    prof = cProfile.Profile()
    prof.enable()
    try:
        yield
    finally:
        prof.disable()
        prof.dump_stats(Path(args.profile) / f"{name}.prof")


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


# -- (b) the fleet shape -----------------------------------------------------------------------
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


# -- report ------------------------------------------------------------------------------------
def summarise(runs: list[dict[str, Measured]]) -> dict[str, Any]:
    names = list(runs[0])
    out: dict[str, Any] = {}
    for n in names:
        out[f"{n}_msgs_per_s"] = round(statistics.median(r[n].rate for r in runs))
        out[f"{n}_cpu_us_per_msg"] = round(statistics.median(r[n].cpu_us for r in runs), 1)
        if n != "paho":
            vs = statistics.median(r[n].rate / r["paho"].rate for r in runs)
            cpu_vs = statistics.median(r[n].cpu_us / r["paho"].cpu_us for r in runs)
            out[f"{n}_vs_paho"] = round(vs, 3)
            out[f"{n}_cpu_vs_paho"] = round(cpu_vs, 3)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=100_000)
    p.add_argument("--payload", type=int, default=6_000)
    p.add_argument("--receive-maximum", type=int, default=1000)
    p.add_argument("--sessions", type=int, default=200)
    p.add_argument("--window", type=int, default=8)
    p.add_argument("--fleet-payload", type=int, default=1_000)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--only", choices=("ingest", "fleet"), default=None)
    p.add_argument("--profile", metavar="DIR", default=None, help="cProfile every variant")
    args = p.parse_args()
    if args.profile is not None:
        Path(args.profile).mkdir(parents=True, exist_ok=True)

    ingest_runs: list[dict[str, Measured]] = []
    fleet_runs: list[dict[str, Measured]] = []
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(data_dir=Path(tmp), max_queued_messages=10 * args.messages + 10)
        broker.start()
        try:
            for run in range(args.repeats):
                if args.only in (None, "ingest"):
                    ingest_runs.append(asyncio.run(bench_ingest(broker.port, args, run)))
                    print(f"ingest run {run}: {_fmt(ingest_runs[-1])}", file=sys.stderr)
                if args.only in (None, "fleet"):
                    fleet_runs.append(asyncio.run(bench_fleet(broker.port, args, run)))
                    print(f"fleet run {run}: {_fmt(fleet_runs[-1])}", file=sys.stderr)
        finally:
            broker.stop()
    result: dict[str, Any] = {
        "ingest": {
            "messages": args.messages,
            "payload_bytes": args.payload,
            "receive_maximum": args.receive_maximum,
            **(summarise(ingest_runs) if ingest_runs else {}),
        },
        "fleet": {
            "sessions": args.sessions,
            "window": args.window,
            "payload_bytes": args.fleet_payload,
            "seconds": args.seconds,
            **(summarise(fleet_runs) if fleet_runs else {}),
        },
        "repeats": args.repeats,
        "statistic": "median",
        "reference": "paho driven in the event loop, same run",
    }
    print(json.dumps(result))
    return 0


def _fmt(rates: dict[str, Measured]) -> str:
    return ", ".join(f"{k} {v.rate:,.0f}/s ({v.cpu_us:.1f} us cpu)" for k, v in rates.items())


if __name__ == "__main__":
    sys.exit(main())
